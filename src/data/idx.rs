//! MNIST and Fashion-MNIST in the IDX format (big-endian header, then raw bytes).
//!
//! Each of the four files may be gzipped or raw; `.gz` is tried first, and the dotted
//! names some mirrors use (`train-images.idx3-ubyte`) are accepted too. Any image count
//! is accepted as long as the header agrees with the file size and with the labels, so
//! subsets work; the official releases have 60000 train and 10000 test images.

use std::path::{Path, PathBuf};

use super::{find_dir, read_file, DataError, DatasetKind, ImageSet, LoadedData};

pub const IMAGE_MAGIC: u32 = 0x0000_0803;
pub const LABEL_MAGIC: u32 = 0x0000_0801;
/// Every MNIST-family image is 28x28 grey.
pub const SIDE: usize = 28;
pub const NUM_CLASSES: usize = 10;

/// The official name of one file, and the dotted variant found on some mirrors.
#[derive(Debug, Clone, Copy)]
struct FileName {
    name: &'static str,
    dotted: &'static str,
}

impl FileName {
    /// Names to try, in order of preference.
    fn candidates(self) -> [String; 4] {
        [
            format!("{}.gz", self.name),
            self.name.to_string(),
            format!("{}.gz", self.dotted),
            self.dotted.to_string(),
        ]
    }

    /// How the file is named in "not found" messages.
    fn shown(self) -> String {
        format!("{}(.gz)", self.name)
    }

    fn locate(self, kind: DatasetKind, dir: &Path) -> Result<PathBuf, DataError> {
        self.candidates()
            .iter()
            .map(|c| dir.join(c))
            .find(|p| p.is_file())
            .ok_or_else(|| kind.missing(dir.join(self.shown()).display().to_string()))
    }
}

const TRAIN_IMAGES: FileName = FileName {
    name: "train-images-idx3-ubyte",
    dotted: "train-images.idx3-ubyte",
};
const TRAIN_LABELS: FileName = FileName {
    name: "train-labels-idx1-ubyte",
    dotted: "train-labels.idx1-ubyte",
};
const TEST_IMAGES: FileName = FileName {
    name: "t10k-images-idx3-ubyte",
    dotted: "t10k-images.idx3-ubyte",
};
const TEST_LABELS: FileName = FileName {
    name: "t10k-labels-idx1-ubyte",
    dotted: "t10k-labels.idx1-ubyte",
};

pub const FASHION_CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Loads MNIST or Fashion-MNIST from the first of `dirs` that holds a training image file.
pub fn load(kind: DatasetKind, dirs: &[PathBuf]) -> Result<LoadedData, DataError> {
    let names = TRAIN_IMAGES.candidates();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let dir = find_dir(kind, dirs, &names, &TRAIN_IMAGES.shown())?;
    load_from(kind, &dir)
}

/// Loads MNIST or Fashion-MNIST from exactly `dir`.
pub fn load_from(kind: DatasetKind, dir: &Path) -> Result<LoadedData, DataError> {
    let train = read_pair(kind, dir, TRAIN_IMAGES, TRAIN_LABELS)?;
    let test = read_pair(kind, dir, TEST_IMAGES, TEST_LABELS)?;
    let class_names = match kind {
        DatasetKind::FashionMnist => FASHION_CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        _ => (0..NUM_CLASSES).map(|d| d.to_string()).collect(),
    };
    Ok(LoadedData {
        kind,
        train,
        test,
        class_names,
        source: dir.display().to_string(),
    })
}

fn read_pair(
    kind: DatasetKind,
    dir: &Path,
    images: FileName,
    labels: FileName,
) -> Result<ImageSet, DataError> {
    let image_path = images.locate(kind, dir)?;
    let label_path = labels.locate(kind, dir)?;
    let pixels = parse_images(kind, &image_path, read_file(kind, &image_path)?)?;
    let labels = parse_labels(kind, &label_path, &read_file(kind, &label_path)?)?;
    let count = pixels.len() / (SIDE * SIDE);
    if count != labels.len() {
        return Err(kind.corrupt(
            &label_path,
            format!(
                "image and label counts differ ({count} vs {}; images from {})",
                labels.len(),
                image_path.display()
            ),
        ));
    }
    Ok(ImageSet {
        images: pixels,
        labels,
        channels: 1,
        height: SIDE,
        width: SIDE,
        num_classes: NUM_CLASSES,
    })
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn check_magic(
    kind: DatasetKind,
    path: &Path,
    bytes: &[u8],
    magic: u32,
    header: usize,
    what: &str,
) -> Result<(), DataError> {
    if bytes.len() < header {
        return Err(kind.corrupt(
            path,
            format!(
                "file is {} bytes, too short for an IDX {what} header ({header} bytes)",
                bytes.len()
            ),
        ));
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(kind.corrupt(
            path,
            format!(
                "bad magic number {found:#010x} (expected {magic:#010x} for an IDX {what} file)"
            ),
        ));
    }
    Ok(())
}

/// Validates an IDX image file and returns its pixels without the header.
fn parse_images(kind: DatasetKind, path: &Path, mut bytes: Vec<u8>) -> Result<Vec<u8>, DataError> {
    const HEADER: usize = 16;
    check_magic(kind, path, &bytes, IMAGE_MAGIC, HEADER, "image")?;
    let [count, rows, cols] = [4, 8, 12].map(|at| be_u32(&bytes, at) as usize);
    if (rows, cols) != (SIDE, SIDE) {
        return Err(kind.corrupt(
            path,
            format!("expected images of {SIDE}x{SIDE}, header says {rows}x{cols}"),
        ));
    }
    // u64: a corrupt header must not overflow on 32-bit targets.
    let expected = count as u64 * (SIDE * SIDE) as u64 + HEADER as u64;
    if bytes.len() as u64 != expected {
        return Err(kind.corrupt(
            path,
            format!(
                "header says {count} images of {SIDE}x{SIDE} ({expected} bytes with the header), \
                 file has {} bytes{}",
                bytes.len(),
                if (bytes.len() as u64) < expected {
                    " (truncated?)"
                } else {
                    ""
                }
            ),
        ));
    }
    bytes.drain(..HEADER);
    Ok(bytes)
}

/// Validates an IDX label file and returns its labels.
fn parse_labels(kind: DatasetKind, path: &Path, bytes: &[u8]) -> Result<Vec<u16>, DataError> {
    const HEADER: usize = 8;
    check_magic(kind, path, bytes, LABEL_MAGIC, HEADER, "label")?;
    let count = be_u32(bytes, 4) as usize;
    let body = &bytes[HEADER..];
    if body.len() != count {
        return Err(kind.corrupt(
            path,
            format!(
                "header says {count} labels ({} bytes with the header), file has {} bytes",
                count + HEADER,
                bytes.len()
            ),
        ));
    }
    if let Some((i, &l)) = body
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= NUM_CLASSES)
    {
        return Err(kind.corrupt(
            path,
            format!("label {l} out of range 0..{} (label #{i})", NUM_CLASSES - 1),
        ));
    }
    Ok(body.iter().map(|&l| u16::from(l)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{load, DataOptions};
    use std::io::Write;

    fn image_file(count: u32, rows: u32, cols: u32, n_pixels: usize, seed: u8) -> Vec<u8> {
        let mut b = IMAGE_MAGIC.to_be_bytes().to_vec();
        for v in [count, rows, cols] {
            b.extend(v.to_be_bytes());
        }
        b.extend((0..n_pixels).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
        b
    }

    fn label_file(labels: &[u8]) -> Vec<u8> {
        let mut b = LABEL_MAGIC.to_be_bytes().to_vec();
        b.extend((labels.len() as u32).to_be_bytes());
        b.extend(labels);
        b
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    const PX: usize = SIDE * SIDE;
    const TRAIN_LABELS_FIXTURE: [u8; 5] = [3, 1, 4, 1, 5];
    const TEST_LABELS_FIXTURE: [u8; 3] = [9, 2, 6];

    /// Writes a valid 5-train / 3-test fixture; train files gzipped when `gzip`.
    fn write_fixture(dir: &Path, gzip: bool) {
        let maybe_gz = |name: &str, bytes: Vec<u8>| {
            if gzip {
                std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        };
        maybe_gz("train-images-idx3-ubyte", image_file(5, 28, 28, 5 * PX, 1));
        maybe_gz("train-labels-idx1-ubyte", label_file(&TRAIN_LABELS_FIXTURE));
        std::fs::write(
            dir.join("t10k-images-idx3-ubyte"),
            image_file(3, 28, 28, 3 * PX, 2),
        )
        .unwrap();
        std::fs::write(
            dir.join("t10k-labels-idx1-ubyte"),
            label_file(&TEST_LABELS_FIXTURE),
        )
        .unwrap();
    }

    fn opts(dir: &Path) -> DataOptions {
        DataOptions {
            data_dir: Some(dir.to_path_buf()),
            ..Default::default()
        }
    }

    fn check_fixture(data: &LoadedData) {
        assert_eq!((data.train.len(), data.test.len()), (5, 3));
        assert_eq!(
            (data.train.channels, data.train.height, data.train.width),
            (1, 28, 28)
        );
        assert_eq!(data.train.labels, vec![3, 1, 4, 1, 5]);
        assert_eq!(data.test.labels, vec![9, 2, 6]);
        assert_eq!(data.train.image(0)[..3], [1, 8, 15]);
        assert_eq!(
            data.train.image(1)[0],
            (PX as u8).wrapping_mul(7).wrapping_add(1)
        );
        assert_eq!(data.test.image(0)[1], 9);
    }

    #[test]
    fn loads_raw_and_gz_fixtures() {
        for gzip in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            write_fixture(tmp.path(), gzip);
            let data = load(DatasetKind::Mnist, &opts(tmp.path())).unwrap();
            check_fixture(&data);
            assert_eq!(data.class_names[7], "7");
            assert_eq!(data.source, tmp.path().display().to_string());
        }
    }

    #[test]
    fn finds_dataset_subfolder_and_dotted_names() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("fashion-mnist");
        std::fs::create_dir(&sub).unwrap();
        write_fixture(&sub, false);
        std::fs::rename(
            sub.join("train-images-idx3-ubyte"),
            sub.join("train-images.idx3-ubyte"),
        )
        .unwrap();
        let data = load(DatasetKind::FashionMnist, &opts(tmp.path())).unwrap();
        check_fixture(&data);
        assert_eq!(data.class_names[9], "Ankle boot");
        assert_eq!(data.source, sub.display().to_string());
    }

    /// Loads a fixture after `spoil` damaged it; returns the error and its message.
    fn load_spoiled(spoil: impl FnOnce(&Path)) -> (DataError, String, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        write_fixture(tmp.path(), false);
        spoil(tmp.path());
        let err = load(DatasetKind::FashionMnist, &opts(tmp.path())).unwrap_err();
        let msg = err.to_string();
        (err, msg, tmp)
    }

    fn assert_corrupt(err: &DataError, msg: &str, path: &Path, needle: &str) {
        assert!(matches!(err, DataError::Corrupt { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(needle), "{msg}");
        assert!(
            msg.starts_with("fashion-mnist: ")
                && msg.contains("apt-get install dataset-fashion-mnist"),
            "{msg}"
        );
    }

    #[test]
    fn bad_magic() {
        let (err, msg, tmp) = load_spoiled(|d| {
            let mut b = image_file(3, 28, 28, 3 * PX, 2);
            b[..4].copy_from_slice(&[0, 0, 0, 0]);
            std::fs::write(d.join("t10k-images-idx3-ubyte"), b).unwrap();
        });
        let path = tmp.path().join("t10k-images-idx3-ubyte");
        assert_corrupt(
            &err,
            &msg,
            &path,
            "bad magic number 0x00000000 (expected 0x00000803 for an IDX image file)",
        );
    }

    #[test]
    fn truncated_image_file() {
        let (err, msg, tmp) = load_spoiled(|d| {
            std::fs::write(
                d.join("t10k-images-idx3-ubyte"),
                image_file(3, 28, 28, 3 * PX - 10, 2),
            )
            .unwrap();
        });
        let path = tmp.path().join("t10k-images-idx3-ubyte");
        assert_corrupt(
            &err,
            &msg,
            &path,
            "header says 3 images of 28x28 (2368 bytes with the header), file has 2358 bytes",
        );
    }

    #[test]
    fn truncated_gzip() {
        let (err, msg, tmp) = load_spoiled(|d| {
            let b = gz(&image_file(5, 28, 28, 5 * PX, 1));
            std::fs::write(d.join("train-images-idx3-ubyte.gz"), &b[..b.len() / 2]).unwrap();
        });
        let path = tmp.path().join("train-images-idx3-ubyte.gz");
        assert_corrupt(&err, &msg, &path, "gzip stream is truncated");
    }

    #[test]
    fn wrong_dimensions() {
        let (err, msg, tmp) = load_spoiled(|d| {
            std::fs::write(
                d.join("t10k-images-idx3-ubyte"),
                image_file(3, 32, 32, 3 * 1024, 2),
            )
            .unwrap();
        });
        let path = tmp.path().join("t10k-images-idx3-ubyte");
        assert_corrupt(
            &err,
            &msg,
            &path,
            "expected images of 28x28, header says 32x32",
        );
    }

    #[test]
    fn count_mismatch() {
        let (err, msg, tmp) = load_spoiled(|d| {
            std::fs::write(d.join("train-labels-idx1-ubyte"), label_file(&[3, 1, 4, 1])).unwrap();
        });
        let path = tmp.path().join("train-labels-idx1-ubyte");
        assert_corrupt(&err, &msg, &path, "image and label counts differ (5 vs 4");
    }

    #[test]
    fn label_header_disagrees_with_size() {
        let (err, msg, tmp) = load_spoiled(|d| {
            let mut b = label_file(&TRAIN_LABELS_FIXTURE);
            b.push(0);
            std::fs::write(d.join("train-labels-idx1-ubyte"), b).unwrap();
        });
        let path = tmp.path().join("train-labels-idx1-ubyte");
        assert_corrupt(
            &err,
            &msg,
            &path,
            "header says 5 labels (13 bytes with the header), file has 14 bytes",
        );
    }

    #[test]
    fn label_out_of_range() {
        let (err, msg, tmp) = load_spoiled(|d| {
            std::fs::write(d.join("t10k-labels-idx1-ubyte"), label_file(&[9, 12, 6])).unwrap();
        });
        let path = tmp.path().join("t10k-labels-idx1-ubyte");
        assert_corrupt(&err, &msg, &path, "label 12 out of range 0..9");
    }

    #[test]
    fn missing_file() {
        let (err, msg, tmp) =
            load_spoiled(|d| std::fs::remove_file(d.join("t10k-labels-idx1-ubyte")).unwrap());
        assert!(matches!(err, DataError::Missing { .. }), "{msg}");
        let shown = tmp
            .path()
            .join("t10k-labels-idx1-ubyte(.gz)")
            .display()
            .to_string();
        assert_eq!(
            msg.lines().next().unwrap(),
            format!("fashion-mnist: file not found: {shown}")
        );
    }

    #[test]
    fn real_fashion_mnist_from_debian_package() {
        let dir = Path::new("/usr/share/datasets/fashion-mnist");
        assert!(
            dir.is_dir(),
            "{} is missing: run `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) to get the real Fashion-MNIST",
            dir.display()
        );
        let data = load(DatasetKind::FashionMnist, &DataOptions::default()).unwrap();
        assert_eq!(data.source, dir.display().to_string());
        assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
        assert_eq!(
            (data.train.height, data.train.width, data.train.channels),
            (28, 28, 1)
        );
        assert_eq!(data.train.class_counts(None), vec![6000; 10]);
        assert_eq!(data.test.class_counts(None), vec![1000; 10]);
        // Real images: mostly dark background, some bright pixels.
        let mean = data.test.images.iter().map(|&p| f64::from(p)).sum::<f64>()
            / data.test.images.len() as f64;
        assert!((40.0..110.0).contains(&mean), "mean pixel {mean}");
    }
}
