//! Property tests: malformed presets and dataset files produce errors, never panics.
//!
//! Case counts are modest so the file runs in seconds in release mode; failures are not
//! persisted to disk (rerun with PROPTEST_CASES to search harder).

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::Config;

use selfdistill::data::{cifar, idx, DataError, DatasetKind, LoadedData};
use selfdistill::preset::{Preset, SHIPPED};

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------- presets

/// One edit applied to a shipped preset's text.
#[derive(Debug, Clone)]
enum Edit {
    /// Cut the text at a fraction of its length.
    Truncate(f64),
    /// Remove one line.
    DropLine(usize),
    /// Replace the value of one `key = value` line.
    Value(usize, String),
    /// Insert text at a fraction of the length.
    Insert(f64, String),
    /// Duplicate one line (duplicate keys, repeated tables).
    Duplicate(usize),
}

fn value_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1e308".to_string()),
        Just("18446744073709551615".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("\"\"".to_string()),
        "\"[a-z\\-_ ./]{0,12}\"",
        "\\[[0-9, \"a-z]{0,16}\\]",
        any::<String>(),
    ]
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Edit::Truncate),
        any::<usize>().prop_map(Edit::DropLine),
        (any::<usize>(), value_strategy()).prop_map(|(i, v)| Edit::Value(i, v)),
        (0.0..1.0f64, "[\\[\\]=\"a-z0-9 \n.#{}_-]{0,20}").prop_map(|(f, s)| Edit::Insert(f, s)),
        any::<usize>().prop_map(Edit::Duplicate),
    ]
}

fn char_boundary(text: &str, frac: f64) -> usize {
    let mut at = ((text.len() as f64) * frac) as usize;
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at.min(text.len())
}

fn apply(text: &str, edit: &Edit) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let pick = |i: usize| i % lines.len().max(1);
    match edit {
        Edit::Truncate(f) => text[..char_boundary(text, *f)].to_string(),
        Edit::DropLine(i) => {
            let mut l = lines.clone();
            if !l.is_empty() {
                l.remove(pick(*i));
            }
            l.join("\n")
        }
        Edit::Value(i, v) => {
            let keyed: Vec<usize> = (0..lines.len())
                .filter(|&k| lines[k].contains('=') && !lines[k].trim_start().starts_with('#'))
                .collect();
            let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            if let Some(&k) = keyed.get(i % keyed.len().max(1)) {
                let key = lines[k].split('=').next().unwrap_or("");
                l[k] = format!("{key}= {v}");
            }
            l.join("\n")
        }
        Edit::Insert(f, s) => {
            let at = char_boundary(text, *f);
            format!("{}{s}{}", &text[..at], &text[at..])
        }
        Edit::Duplicate(i) => {
            let mut l = lines.clone();
            if !l.is_empty() {
                let k = pick(*i);
                l.insert(k, lines[k]);
            }
            l.join("\n")
        }
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn arbitrary_text_is_never_a_panic(text in any::<String>()) {
        let _ = Preset::from_toml(&text, "fuzz");
    }

    #[test]
    fn tomlish_text_is_never_a_panic(text in "([a-z_.\\[\\]]{1,12} ?= ?[0-9a-z\"\\[\\], .-]{0,12}\n){0,12}") {
        let _ = Preset::from_toml(&text, "fuzz");
    }

    #[test]
    fn mutated_shipped_presets_are_never_a_panic(
        which in 0..SHIPPED.len(),
        edits in prop::collection::vec(edit_strategy(), 1..4),
    ) {
        let mut text = SHIPPED[which].1.to_string();
        for e in &edits {
            text = apply(&text, e);
        }
        if let Ok(p) = Preset::from_toml(&text, "fuzz") {
            // Whatever validates must survive a round trip through its own TOML.
            let again = Preset::from_toml(&p.to_toml(), "fuzz again");
            prop_assert!(again.is_ok(), "{:?}\n--- from ---\n{}", again.err(), text);
        }
    }
}

// ---------------------------------------------------------------- IDX (MNIST family)

const PX: usize = 28 * 28;

fn idx_images(count: usize) -> Vec<u8> {
    let mut b = idx::IMAGE_MAGIC.to_be_bytes().to_vec();
    for v in [count as u32, 28, 28] {
        b.extend(v.to_be_bytes());
    }
    b.extend((0..count * PX).map(|i| i as u8));
    b
}

fn idx_labels(count: usize) -> Vec<u8> {
    let mut b = idx::LABEL_MAGIC.to_be_bytes().to_vec();
    b.extend((count as u32).to_be_bytes());
    b.extend((0..count).map(|i| (i % 10) as u8));
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A damage done to a valid file.
#[derive(Debug, Clone)]
enum Damage {
    Flip(usize, u8),
    Truncate(usize),
    /// Overwrite a big-endian u32 at a 4-aligned header offset.
    Header(usize, u32),
    Append(Vec<u8>),
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Damage::Flip(i, b)),
        any::<usize>().prop_map(Damage::Truncate),
        (
            0..4usize,
            prop_oneof![
                any::<u32>(),
                Just(u32::MAX),
                Just(0u32),
                Just(1u32),
                Just(28u32)
            ]
        )
            .prop_map(|(i, v)| Damage::Header(i, v)),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Append),
    ]
}

fn damage(mut bytes: Vec<u8>, d: &Damage) -> Vec<u8> {
    match d {
        Damage::Flip(i, b) => {
            if !bytes.is_empty() {
                let n = bytes.len();
                bytes[i % n] ^= b;
            }
        }
        Damage::Truncate(i) => {
            let n = bytes.len();
            bytes.truncate(i % (n + 1));
        }
        Damage::Header(i, v) => {
            let at = 4 * i;
            if bytes.len() >= at + 4 {
                bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
        Damage::Append(extra) => bytes.extend(extra),
    }
    bytes
}

const IDX_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// A successful load must be self-consistent.
fn check_loaded(d: &LoadedData) -> Result<(), TestCaseError> {
    for set in [&d.train, &d.test] {
        prop_assert_eq!(set.images.len(), set.len() * set.image_len());
        prop_assert!(set.labels.iter().all(|&l| usize::from(l) < set.num_classes));
        prop_assert_eq!(set.class_counts(None).iter().sum::<usize>(), set.len());
    }
    prop_assert_eq!(d.class_names.len(), d.train.num_classes);
    Ok(())
}

fn check_result(r: Result<LoadedData, DataError>) -> Result<(), TestCaseError> {
    match r {
        Ok(d) => check_loaded(&d),
        // Every error must render (messages are shown to users as is).
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            Ok(())
        }
    }
}

fn write_idx(dir: &Path, files: &[Vec<u8>; 4], gzip: [bool; 4]) {
    for ((name, bytes), g) in IDX_NAMES.iter().zip(files).zip(gzip) {
        if g {
            std::fs::write(dir.join(format!("{name}.gz")), gz(bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn arbitrary_idx_bytes_never_panic(
        files in prop::array::uniform4(prop::collection::vec(any::<u8>(), 0..64)),
        gzip in prop::array::uniform4(any::<bool>()),
        fashion in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        write_idx(tmp.path(), &files, gzip);
        let kind = if fashion { DatasetKind::FashionMnist } else { DatasetKind::Mnist };
        check_result(idx::load_from(kind, tmp.path()))?;
    }

    #[test]
    fn damaged_idx_files_never_panic(
        which in 0..4usize,
        damages in prop::collection::vec(damage_strategy(), 1..4),
        gzip in prop::array::uniform4(any::<bool>()),
        damage_compressed in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut files = [idx_images(3), idx_labels(3), idx_images(2), idx_labels(2)];
        let mut gzip = gzip;
        if damage_compressed && gzip[which] {
            // Damage the gzip stream itself.
            let mut bytes = gz(&files[which]);
            for d in &damages {
                bytes = damage(bytes, d);
            }
            std::fs::write(tmp.path().join(format!("{}.gz", IDX_NAMES[which])), bytes).unwrap();
            gzip[which] = false;
            files[which] = Vec::new();
            for (i, (name, bytes)) in IDX_NAMES.iter().zip(&files).enumerate() {
                if i == which {
                    continue;
                }
                if gzip[i] {
                    std::fs::write(tmp.path().join(format!("{name}.gz")), gz(bytes)).unwrap();
                } else {
                    std::fs::write(tmp.path().join(name), bytes).unwrap();
                }
            }
        } else {
            for d in &damages {
                files[which] = damage(std::mem::take(&mut files[which]), d);
            }
            write_idx(tmp.path(), &files, gzip);
        }
        check_result(idx::load_from(DatasetKind::Mnist, tmp.path()))?;
    }
}

// ---------------------------------------------------------------- CIFAR

fn cifar_records(n: usize, label_bytes: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let mut rec: Vec<u8> = (0..label_bytes).map(|k| ((i + k) % 10) as u8).collect();
            rec.extend((0..3072).map(|p| (p + i) as u8));
            rec
        })
        .collect()
}

fn write_cifar10(dir: &Path, files: &[Vec<u8>; 6]) {
    let names = cifar::CIFAR10_TRAIN_FILES
        .iter()
        .chain(std::iter::once(&cifar::CIFAR10_TEST_FILE));
    for (name, bytes) in names.zip(files) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn arbitrary_cifar10_bytes_never_panic(
        files in prop::array::uniform6(prop::collection::vec(any::<u8>(), 0..80)),
        one_record in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut files = files;
        if one_record {
            // Sizes that are right, contents random: labels out of range must be caught.
            for f in files.iter_mut() {
                f.resize(3073, 0xff);
            }
        }
        write_cifar10(tmp.path(), &files);
        check_result(cifar::load_cifar10(&[tmp.path().to_path_buf()]))?;
    }

    #[test]
    fn damaged_cifar_files_never_panic(
        which in 0..6usize,
        damages in prop::collection::vec(damage_strategy(), 1..4),
        hundred in any::<bool>(),
        coarse in any::<bool>(),
        gzip in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let encode = |b: Vec<u8>| if gzip { gz(&b) } else { b };
        if hundred {
            let mut files = [cifar_records(3, 2), cifar_records(2, 2)];
            let which = which % 2;
            for d in &damages {
                files[which] = damage(std::mem::take(&mut files[which]), d);
            }
            let [train, test] = files;
            std::fs::write(tmp.path().join(cifar::CIFAR100_TRAIN_FILE), encode(train)).unwrap();
            std::fs::write(tmp.path().join(cifar::CIFAR100_TEST_FILE), encode(test)).unwrap();
            check_result(cifar::load_cifar100(&[tmp.path().to_path_buf()], coarse))?;
        } else {
            let mut files: [Vec<u8>; 6] = std::array::from_fn(|_| cifar_records(2, 1));
            for d in &damages {
                files[which] = damage(std::mem::take(&mut files[which]), d);
            }
            let files = files.map(encode);
            write_cifar10(tmp.path(), &files);
            check_result(cifar::load_cifar10(&[tmp.path().to_path_buf()]))?;
        }
    }
}
