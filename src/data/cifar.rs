//! CIFAR-10 and CIFAR-100, *binary version*.
//!
//! A file is a sequence of fixed-size records: the label byte(s), then 3072 pixel
//! bytes as three 32x32 planes (R, G, B), which is already the NCHW layout we store.
//! CIFAR-10: `data_batch_1.bin`..`data_batch_5.bin` and `test_batch.bin`, 1 label byte.
//! CIFAR-100: `train.bin` and `test.bin`, coarse then fine label byte.
//! Any number of records per file is accepted (the official files have 10000, or
//! 50000 for CIFAR-100's `train.bin`); the size must be a positive multiple of a record.

use std::path::{Path, PathBuf};

use super::{find_dir, read_file, DataError, DatasetKind, ImageSet, LoadedData};

pub const SIDE: usize = 32;
pub const CHANNELS: usize = 3;
const PIXELS: usize = CHANNELS * SIDE * SIDE;

pub const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";
pub const CIFAR100_TRAIN_FILE: &str = "train.bin";
pub const CIFAR100_TEST_FILE: &str = "test.bin";

/// Names used when `batches.meta.txt` is absent; they never change.
pub const CIFAR10_CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Byte layout of one record kind.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Label bytes before the pixels.
    label_bytes: usize,
    /// Which label byte is used, and how many classes it has.
    label_at: usize,
    num_classes: usize,
    /// Every label byte with its class count, all checked so corruption shows early.
    ranges: &'static [(&'static str, usize)],
}

impl Layout {
    fn record(self) -> usize {
        self.label_bytes + PIXELS
    }
}

const CIFAR10: Layout = Layout {
    label_bytes: 1,
    label_at: 0,
    num_classes: 10,
    ranges: &[("label", 10)],
};

fn cifar100_layout(coarse: bool) -> Layout {
    Layout {
        label_bytes: 2,
        label_at: if coarse { 0 } else { 1 },
        num_classes: if coarse { 20 } else { 100 },
        ranges: &[("coarse label", 20), ("fine label", 100)],
    }
}

/// Every base folder, followed by its `sub` folder (where the archive extracts to).
fn with_subfolder(dirs: &[PathBuf], sub: &str) -> Vec<PathBuf> {
    dirs.iter().flat_map(|d| [d.clone(), d.join(sub)]).collect()
}

/// Loads CIFAR-10 from the first of `dirs` (or their `cifar-10-batches-bin`) with a batch file.
pub fn load_cifar10(dirs: &[PathBuf]) -> Result<LoadedData, DataError> {
    let kind = DatasetKind::Cifar10;
    let dirs = with_subfolder(dirs, "cifar-10-batches-bin");
    let dir = find_dir(kind, &dirs, &CIFAR10_TRAIN_FILES, CIFAR10_TRAIN_FILES[0])?;
    let train = read_set(kind, &dir, &CIFAR10_TRAIN_FILES, CIFAR10)?;
    let test = read_set(kind, &dir, &[CIFAR10_TEST_FILE], CIFAR10)?;
    Ok(LoadedData {
        kind,
        train,
        test,
        class_names: class_names(&dir.join("batches.meta.txt"), &CIFAR10_CLASS_NAMES),
        source: dir.display().to_string(),
    })
}

/// Loads CIFAR-100 from the first of `dirs` (or their `cifar-100-binary`) with `train.bin`;
/// labels are the 100 fine classes, or the 20 superclasses when `coarse`.
pub fn load_cifar100(dirs: &[PathBuf], coarse: bool) -> Result<LoadedData, DataError> {
    let kind = DatasetKind::Cifar100;
    let dirs = with_subfolder(dirs, "cifar-100-binary");
    let dir = find_dir(kind, &dirs, &[CIFAR100_TRAIN_FILE], CIFAR100_TRAIN_FILE)?;
    let layout = cifar100_layout(coarse);
    let train = read_set(kind, &dir, &[CIFAR100_TRAIN_FILE], layout)?;
    let test = read_set(kind, &dir, &[CIFAR100_TEST_FILE], layout)?;
    let names_file = if coarse {
        "coarse_label_names.txt"
    } else {
        "fine_label_names.txt"
    };
    let fallback: Vec<String> = (0..layout.num_classes)
        .map(|i| format!("class {i}"))
        .collect();
    let fallback: Vec<&str> = fallback.iter().map(String::as_str).collect();
    Ok(LoadedData {
        kind,
        train,
        test,
        class_names: class_names(&dir.join(names_file), &fallback),
        source: dir.display().to_string(),
    })
}

/// Reads and concatenates `files` from `dir`, all of which must exist.
fn read_set(
    kind: DatasetKind,
    dir: &Path,
    files: &[&str],
    layout: Layout,
) -> Result<ImageSet, DataError> {
    let mut set = ImageSet {
        images: Vec::new(),
        labels: Vec::new(),
        channels: CHANNELS,
        height: SIDE,
        width: SIDE,
        num_classes: layout.num_classes,
    };
    for name in files {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(kind.missing(path.display().to_string()));
        }
        let bytes = read_file(kind, &path)?;
        append_records(kind, &path, &bytes, layout, &mut set)?;
    }
    Ok(set)
}

fn append_records(
    kind: DatasetKind,
    path: &Path,
    bytes: &[u8],
    layout: Layout,
    set: &mut ImageSet,
) -> Result<(), DataError> {
    let record = layout.record();
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(kind.corrupt(
            path,
            format!(
                "file is {} bytes, expected a positive multiple of {record} \
                 ({} label byte(s) + {PIXELS} pixel bytes per record; 10000 records are {} bytes)",
                bytes.len(),
                layout.label_bytes,
                10_000 * record
            ),
        ));
    }
    let n = bytes.len() / record;
    set.images.reserve(n * PIXELS);
    set.labels.reserve(n);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        for (at, &(what, classes)) in layout.ranges.iter().enumerate() {
            if usize::from(rec[at]) >= classes {
                return Err(kind.corrupt(
                    path,
                    format!(
                        "{what} {} out of range 0..{} (record {i})",
                        rec[at],
                        classes - 1
                    ),
                ));
            }
        }
        set.labels.push(u16::from(rec[layout.label_at]));
        set.images.extend_from_slice(&rec[layout.label_bytes..]);
    }
    Ok(())
}

/// One name per non-empty line of `path` if it has exactly as many as `fallback`,
/// otherwise `fallback` (the names files are optional).
fn class_names(path: &Path, fallback: &[&str]) -> Vec<String> {
    let from_file: Option<Vec<String>> = std::fs::read_to_string(path).ok().map(|text| {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    });
    match from_file {
        Some(names) if names.len() == fallback.len() => names,
        _ => fallback.iter().map(|s| s.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{load, DataOptions};

    /// A record whose R plane is all `r`, G all `g`, B all `b` (with a marker in pixel 1).
    fn record(labels: &[u8], r: u8, g: u8, b: u8) -> Vec<u8> {
        let mut rec = labels.to_vec();
        for v in [r, g, b] {
            rec.extend(std::iter::repeat_n(v, SIDE * SIDE));
        }
        rec[labels.len() + 1] = 200;
        rec
    }

    /// `n` records with labels cycling from `first`; plane values encode the record index.
    fn cifar10_file(n: usize, first: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| record(&[((first + i) % 10) as u8], i as u8, 100 + i as u8, 50))
            .collect()
    }

    fn opts(dir: &Path, coarse: bool) -> DataOptions {
        DataOptions {
            data_dir: Some(dir.to_path_buf()),
            cifar100_coarse: coarse,
            ..Default::default()
        }
    }

    fn write_cifar10(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for (k, name) in CIFAR10_TRAIN_FILES.iter().enumerate() {
            std::fs::write(dir.join(name), cifar10_file(7, k)).unwrap();
        }
        std::fs::write(dir.join(CIFAR10_TEST_FILE), cifar10_file(4, 3)).unwrap();
    }

    #[test]
    fn cifar10_fixture() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cifar-10-batches-bin");
        write_cifar10(&dir);
        let data = load(DatasetKind::Cifar10, &opts(tmp.path(), false)).unwrap();
        assert_eq!(data.source, dir.display().to_string());
        assert_eq!((data.train.len(), data.test.len()), (35, 4));
        assert_eq!(
            (data.train.channels, data.train.height, data.train.width),
            (3, 32, 32)
        );
        assert_eq!(data.train.labels[..8], [0, 1, 2, 3, 4, 5, 6, 1]);
        assert_eq!(data.test.labels, vec![3, 4, 5, 6]);
        // Image 9 is record 2 of data_batch_2: R plane 2, G plane 102, B plane 50.
        let img = data.train.image(9);
        assert_eq!((img[0], img[1], img[2]), (2, 200, 2));
        assert_eq!((img[1024], img[2048], img[3071]), (102, 50, 50));
        assert_eq!(data.class_names[0], "airplane");
    }

    #[test]
    fn cifar10_names_from_meta_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar10(tmp.path());
        let names: String = (0..10).map(|i| format!("thing{i}\n")).collect();
        std::fs::write(tmp.path().join("batches.meta.txt"), names + "\n").unwrap();
        let data = load(DatasetKind::Cifar10, &opts(tmp.path(), false)).unwrap();
        assert_eq!(data.class_names[3], "thing3");
    }

    #[test]
    fn cifar10_wrong_size_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar10(tmp.path());
        let path = tmp.path().join("data_batch_3.bin");
        let mut bytes = cifar10_file(7, 0);
        bytes.pop();
        std::fs::write(&path, bytes).unwrap();
        let err = load(DatasetKind::Cifar10, &opts(tmp.path(), false)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::Corrupt { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains("file is 21510 bytes, expected a positive multiple of 3073"),
            "{msg}"
        );
        assert!(msg.contains("binary version"), "{msg}");
    }

    #[test]
    fn cifar10_bad_label_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar10(tmp.path());
        let mut bytes = cifar10_file(4, 3);
        bytes[2 * 3073] = 10;
        std::fs::write(tmp.path().join(CIFAR10_TEST_FILE), bytes).unwrap();
        let msg = load(DatasetKind::Cifar10, &opts(tmp.path(), false))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("label 10 out of range 0..9 (record 2)"),
            "{msg}"
        );
    }

    #[test]
    fn cifar10_missing_test_batch() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar10(tmp.path());
        let path = tmp.path().join(CIFAR10_TEST_FILE);
        std::fs::remove_file(&path).unwrap();
        let err = load(DatasetKind::Cifar10, &opts(tmp.path(), false)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::Missing { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!("cifar10: file not found: {}\n", path.display())),
            "{msg}"
        );
    }

    fn write_cifar100(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        // (coarse, fine) label pairs; fine 99 exercises the top of the range.
        let train: Vec<u8> = [(0, 10), (19, 99), (4, 55), (7, 3), (4, 0)]
            .iter()
            .enumerate()
            .flat_map(|(i, &(c, f))| record(&[c, f], 10 * i as u8, 1, 2))
            .collect();
        let test: Vec<u8> = [(3, 42), (11, 77)]
            .iter()
            .flat_map(|&(c, f)| record(&[c, f], 9, 8, 7))
            .collect();
        std::fs::write(dir.join(CIFAR100_TRAIN_FILE), train).unwrap();
        std::fs::write(dir.join(CIFAR100_TEST_FILE), test).unwrap();
    }

    #[test]
    fn cifar100_fine_and_coarse() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cifar100").join("cifar-100-binary");
        write_cifar100(&dir);
        let fine = load(DatasetKind::Cifar100, &opts(tmp.path(), false)).unwrap();
        assert_eq!(fine.train.labels, vec![10, 99, 55, 3, 0]);
        assert_eq!(fine.test.labels, vec![42, 77]);
        assert_eq!(fine.train.num_classes, 100);
        assert_eq!(fine.class_names.len(), 100);
        assert_eq!(fine.class_names[5], "class 5");
        assert_eq!(
            fine.train.image(3)[0],
            30,
            "pixels start after both label bytes"
        );
        assert_eq!(fine.train.image(3)[1024], 1);

        std::fs::write(
            dir.join("coarse_label_names.txt"),
            (0..20).map(|i| format!("super{i}\n")).collect::<String>(),
        )
        .unwrap();
        let coarse = load(DatasetKind::Cifar100, &opts(tmp.path(), true)).unwrap();
        assert_eq!(coarse.train.labels, vec![0, 19, 4, 7, 4]);
        assert_eq!(coarse.test.labels, vec![3, 11]);
        assert_eq!(coarse.train.num_classes, 20);
        assert_eq!(coarse.class_names[19], "super19");
        assert_eq!(coarse.train.images, fine.train.images);
    }

    #[test]
    fn cifar100_errors() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar100(tmp.path());
        let path = tmp.path().join(CIFAR100_TEST_FILE);
        std::fs::write(&path, record(&[20, 1], 0, 0, 0)).unwrap();
        let msg = load(DatasetKind::Cifar100, &opts(tmp.path(), false))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("coarse label 20 out of range 0..19 (record 0)"),
            "{msg}"
        );

        std::fs::write(&path, vec![0u8; 3073]).unwrap();
        let err = load(DatasetKind::Cifar100, &opts(tmp.path(), false)).unwrap_err();
        assert!(matches!(err, DataError::Corrupt { .. }));
        assert!(
            err.to_string()
                .contains("expected a positive multiple of 3074"),
            "{err}"
        );

        std::fs::remove_file(&path).unwrap();
        let msg = load(DatasetKind::Cifar100, &opts(tmp.path(), false))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!("cifar100: file not found: {}", path.display())),
            "{msg}"
        );
    }
}
