//! Datasets: what they are, where they come from, and how they become batches.
//!
//! Every dataset is loaded whole into memory as an [`ImageSet`] of `u8` pixels
//! (NCHW per image); [`batch::fill_batch`] turns a list of indices into a normalised
//! `f32` batch. Built-in data (`synthetic`, `digits`) needs no files; the MNIST family
//! and CIFAR are read from a folder (see [`default_data_dir`]).

pub mod batch;
pub mod cifar;
pub mod digits;
pub mod download;
pub mod idx;
pub mod split;
pub mod synthetic;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use batch::{fill_batch, shuffled, Augment, Normalizer};
pub use split::{stratified_split, Split};
pub use synthetic::SyntheticConfig;

/// Which dataset to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    Synthetic,
    Digits,
    Mnist,
    FashionMnist,
    Cifar10,
    Cifar100,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 6] = [
        DatasetKind::Synthetic,
        DatasetKind::Digits,
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
    ];

    /// The name used on the command line, in presets and in folder names.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::Digits => "digits",
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
        }
    }

    /// Inverse of [`DatasetKind::name`]; ignores ASCII case and accepts `_` for `-`.
    pub fn parse(s: &str) -> Option<DatasetKind> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL.into_iter().find(|k| k.name() == wanted)
    }

    /// True for datasets read from files on disk (everything but synthetic and digits).
    pub fn needs_files(self) -> bool {
        !matches!(self, DatasetKind::Synthetic | DatasetKind::Digits)
    }

    /// Whether training uses crop/flip augmentation unless told otherwise.
    pub fn default_augment(self) -> bool {
        matches!(self, DatasetKind::Cifar10 | DatasetKind::Cifar100)
    }

    /// How to get the files, shown under every error about them.
    pub fn hint(self) -> &'static str {
        match self {
            DatasetKind::Synthetic => "synthetic data is generated; check the synthetic settings",
            DatasetKind::Digits => "the digits data is built into the program; this is a bug",
            DatasetKind::Mnist => {
                "place train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
                 t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (from the MNIST \
                 distribution) in that folder, or pass --data-dir"
            }
            DatasetKind::FashionMnist => {
                "on Debian/Ubuntu: apt-get install dataset-fashion-mnist (installs \
                 /usr/share/datasets/fashion-mnist), or place the four IDX files from \
                 Zalando's fashion-mnist release in the folder and pass --data-dir"
            }
            DatasetKind::Cifar10 => {
                "download the CIFAR-10 *binary version* (cifar-10-binary.tar.gz) from the \
                 CIFAR page of Alex Krizhevsky, extract it, and pass --data-dir pointing at \
                 the folder with data_batch_1.bin..data_batch_5.bin and test_batch.bin"
            }
            DatasetKind::Cifar100 => {
                "download the CIFAR-100 *binary version* (cifar-100-binary.tar.gz) from the \
                 CIFAR page of Alex Krizhevsky, extract it, and pass --data-dir pointing at \
                 the folder with train.bin and test.bin"
            }
        }
    }

    pub(crate) fn corrupt(self, path: &Path, what: impl Into<String>) -> DataError {
        DataError::Corrupt {
            dataset: self.name(),
            path: path.to_path_buf(),
            what: what.into(),
            hint: self.hint(),
        }
    }

    pub(crate) fn missing(self, path: impl Into<String>) -> DataError {
        DataError::Missing {
            dataset: self.name(),
            path: path.into(),
            hint: self.hint(),
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong while loading data. Messages are shown to users as is.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file (or every candidate folder) is absent; `path` names what was looked at.
    #[error("{dataset}: file not found: {path}\n  hint: {hint}")]
    Missing {
        dataset: &'static str,
        path: String,
        hint: &'static str,
    },
    /// A file exists but its contents are not what the format promises.
    #[error("{dataset}: {}: {what}\n  hint: {hint}", path.display())]
    Corrupt {
        dataset: &'static str,
        path: PathBuf,
        what: String,
        hint: &'static str,
    },
    /// The operating system refused a read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Settings that cannot produce a dataset (e.g. a synthetic image size out of range).
    #[error("{dataset}: {what}")]
    Invalid { dataset: &'static str, what: String },
}

/// Images stored compactly as u8, NCHW per image (channel-major inside one image).
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub images: Vec<u8>,
    pub labels: Vec<u16>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image: channels * height * width.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Pixels of image `i` (panics if `i >= len()`, like slice indexing).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Samples per class over `indices` (all samples when `None`); labels outside
    /// `0..num_classes` are not counted.
    pub fn class_counts(&self, indices: Option<&[usize]>) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        let mut add = |label: u16| {
            if let Some(c) = counts.get_mut(usize::from(label)) {
                *c += 1;
            }
        };
        match indices {
            Some(idx) => idx
                .iter()
                .filter_map(|&i| self.labels.get(i))
                .for_each(|&l| add(l)),
            None => self.labels.iter().for_each(|&l| add(l)),
        }
        counts
    }

    /// A new set holding the samples at `indices`, in that order (out-of-range ones skipped).
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        let keep: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| i < self.len())
            .collect();
        let mut images = Vec::with_capacity(keep.len() * self.image_len());
        keep.iter()
            .for_each(|&i| images.extend_from_slice(self.image(i)));
        ImageSet {
            images,
            labels: keep.iter().map(|&i| self.labels[i]).collect(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: self.num_classes,
        }
    }
}

/// A dataset ready for training: train and test sets plus description.
#[derive(Debug, Clone)]
pub struct LoadedData {
    pub kind: DatasetKind,
    pub train: ImageSet,
    pub test: ImageSet,
    pub class_names: Vec<String>,
    /// Where it came from: "generated (seed 7)", "embedded UCI digits", or the folder path.
    pub source: String,
}

/// How to find or make the data.
#[derive(Debug, Clone, Default)]
pub struct DataOptions {
    /// Folder with the dataset files (searched directly and in `<dir>/<dataset-name>`);
    /// `None` searches [`default_data_dir`].
    pub data_dir: Option<PathBuf>,
    pub synthetic: SyntheticConfig,
    /// CIFAR-100: train on the 20 coarse superclasses instead of the 100 fine classes.
    pub cifar100_coarse: bool,
}

/// Loads (or generates) the dataset `kind`.
pub fn load(kind: DatasetKind, opts: &DataOptions) -> Result<LoadedData, DataError> {
    match kind {
        DatasetKind::Synthetic => synthetic::generate(&opts.synthetic),
        DatasetKind::Digits => digits::load(),
        DatasetKind::Mnist | DatasetKind::FashionMnist => idx::load(kind, &search_dirs(kind, opts)),
        DatasetKind::Cifar10 => cifar::load_cifar10(&search_dirs(kind, opts)),
        DatasetKind::Cifar100 => {
            cifar::load_cifar100(&search_dirs(kind, opts), opts.cifar100_coarse)
        }
    }
}

/// Folders searched, in order, when no data dir is given. Empty for built-in datasets.
///
/// fashion-mnist: `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist`),
/// then the user folder; all others: `$XDG_DATA_HOME/selfdistill/datasets/<name>`, where
/// `$XDG_DATA_HOME` defaults to `~/.local/share`.
pub fn default_data_dir(kind: DatasetKind) -> Vec<PathBuf> {
    if !kind.needs_files() {
        return Vec::new();
    }
    let mut dirs = Vec::new();
    if kind == DatasetKind::FashionMnist {
        dirs.push(PathBuf::from("/usr/share/datasets/fashion-mnist"));
    }
    if let Some(base) = user_data_dir() {
        dirs.push(base.join("selfdistill").join("datasets").join(kind.name()));
    }
    dirs
}

fn user_data_dir() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_DATA_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".local/share"))
        })
}

/// Base folders for a file-backed dataset: the data dir and `<data dir>/<name>`, or the defaults.
fn search_dirs(kind: DatasetKind, opts: &DataOptions) -> Vec<PathBuf> {
    match &opts.data_dir {
        Some(d) => vec![d.clone(), d.join(kind.name())],
        None => default_data_dir(kind),
    }
}

/// The first of `dirs` holding any of `files`; otherwise a `Missing` error naming
/// `shown` in every folder searched.
pub(crate) fn find_dir(
    kind: DatasetKind,
    dirs: &[PathBuf],
    files: &[&str],
    shown: &str,
) -> Result<PathBuf, DataError> {
    if let Some(d) = dirs
        .iter()
        .find(|d| files.iter().any(|f| d.join(f).is_file()))
    {
        return Ok(d.clone());
    }
    if dirs.is_empty() {
        return Err(kind.missing(format!(
            "{shown} (no folder to search: neither XDG_DATA_HOME nor HOME is set)"
        )));
    }
    let looked: Vec<String> = dirs
        .iter()
        .map(|d| d.join(shown).display().to_string())
        .collect();
    Err(kind.missing(looked.join(", ")))
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic bytes (the
/// content decides, not the name: browsers sometimes unpack a `.gz` but keep its name).
pub(crate) fn read_file(kind: DatasetKind, path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => kind.missing(path.display().to_string()),
        _ => DataError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        gunzip(&bytes).map_err(|e| gzip_error(kind, path, e))
    } else {
        Ok(bytes)
    }
}

pub(crate) fn gunzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

pub(crate) fn gzip_error(kind: DatasetKind, path: &Path, e: std::io::Error) -> DataError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => kind.corrupt(path, "gzip stream is truncated"),
        _ => kind.corrupt(path, format!("invalid gzip data: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IntoDeserializer;
    use serde::Deserialize;

    #[test]
    fn names_round_trip() {
        for k in DatasetKind::ALL {
            assert_eq!(DatasetKind::parse(k.name()), Some(k));
            // serde's kebab-case names must agree with name().
            let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
                k.name().into_deserializer();
            assert_eq!(DatasetKind::deserialize(de).ok(), Some(k));
        }
        assert_eq!(
            DatasetKind::parse("Fashion_MNIST"),
            Some(DatasetKind::FashionMnist)
        );
        assert_eq!(DatasetKind::parse("imagenet"), None);
        assert!(DatasetKind::Cifar10.needs_files() && !DatasetKind::Digits.needs_files());
        assert!(DatasetKind::Cifar100.default_augment() && !DatasetKind::Mnist.default_augment());
    }

    #[test]
    fn missing_folder_names_every_candidate() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = DataOptions {
            data_dir: Some(tmp.path().to_path_buf()),
            ..Default::default()
        };
        for kind in [
            DatasetKind::Mnist,
            DatasetKind::Cifar10,
            DatasetKind::Cifar100,
        ] {
            let err = load(kind, &opts).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, DataError::Missing { .. }), "{msg}");
            assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
            assert!(
                msg.contains(&tmp.path().join(kind.name()).display().to_string()),
                "{msg}"
            );
            assert!(msg.contains("hint: "), "{msg}");
        }
    }

    #[test]
    fn default_dirs() {
        assert!(default_data_dir(DatasetKind::Digits).is_empty());
        let fashion = default_data_dir(DatasetKind::FashionMnist);
        assert_eq!(
            fashion[0],
            PathBuf::from("/usr/share/datasets/fashion-mnist")
        );
        for d in default_data_dir(DatasetKind::Mnist) {
            assert!(d.ends_with("selfdistill/datasets/mnist"), "{}", d.display());
        }
    }

    #[test]
    fn image_set_accessors() {
        let set = ImageSet {
            images: (0..12).collect(),
            labels: vec![0, 2, 2],
            channels: 1,
            height: 2,
            width: 2,
            num_classes: 3,
        };
        assert_eq!(set.len(), 3);
        assert_eq!(set.image_len(), 4);
        assert_eq!(set.image(1), &[4, 5, 6, 7]);
        assert_eq!(set.class_counts(None), vec![1, 0, 2]);
        assert_eq!(set.class_counts(Some(&[1, 9])), vec![0, 0, 1]);
        let sub = set.subset(&[2, 0]);
        assert_eq!(sub.images, vec![8, 9, 10, 11, 0, 1, 2, 3]);
        assert_eq!(sub.labels, vec![2, 0]);
    }
}
