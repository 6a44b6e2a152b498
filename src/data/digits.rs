//! The UCI optical digits (1797 images of 8x8, as shipped by scikit-learn), built into
//! the binary; attribution and licence are in `assets/digits/`.
//!
//! Pixel values 0..16 are scaled to 0..255 with `(v*255 + 8) / 16`. The data has no
//! official test set, so a fixed stratified 20% of it is held out as the test set,
//! always with seed [`TEST_SPLIT_SEED`] — independent of any run seed, so every run
//! (and every preset) is scored on the same 359 images.

use std::path::Path;

use super::split::stratified_split;
use super::{gunzip, gzip_error, DataError, DatasetKind, ImageSet, LoadedData};

const CSV_GZ: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/digits/digits.csv.gz"
));
/// Shown as the path in (unexpected) errors about the embedded file.
const EMBEDDED: &str = "<embedded>/assets/digits/digits.csv.gz";

pub const SIDE: usize = 8;
pub const NUM_CLASSES: usize = 10;
pub const TEST_FRACTION: f64 = 0.2;
/// Seed of the fixed train/test split; never derived from the run seed.
pub const TEST_SPLIT_SEED: u64 = 0x5EED;

/// The embedded digits, split into train and the fixed test set.
pub fn load() -> Result<LoadedData, DataError> {
    let all = parse_all()?;
    let split = stratified_split(&all.labels, NUM_CLASSES, TEST_FRACTION, TEST_SPLIT_SEED);
    Ok(LoadedData {
        kind: DatasetKind::Digits,
        train: all.subset(&split.train),
        test: all.subset(&split.val),
        class_names: (0..NUM_CLASSES).map(|d| d.to_string()).collect(),
        source: "embedded UCI digits".to_string(),
    })
}

/// All 1797 samples in file order.
fn parse_all() -> Result<ImageSet, DataError> {
    let kind = DatasetKind::Digits;
    let path = Path::new(EMBEDDED);
    let csv = gunzip(CSV_GZ).map_err(|e| gzip_error(kind, path, e))?;
    let text =
        std::str::from_utf8(&csv).map_err(|e| kind.corrupt(path, format!("not UTF-8: {e}")))?;
    let mut set = ImageSet {
        images: Vec::with_capacity(1797 * SIDE * SIDE),
        labels: Vec::with_capacity(1797),
        channels: 1,
        height: SIDE,
        width: SIDE,
        num_classes: NUM_CLASSES,
    };
    for (line_no, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        parse_row(line, &mut set)
            .map_err(|what| kind.corrupt(path, format!("line {}: {what}", line_no + 1)))?;
    }
    Ok(set)
}

/// Appends one row: 64 pixel values 0..=16, then the label 0..=9.
fn parse_row(line: &str, set: &mut ImageSet) -> Result<(), String> {
    let values: Vec<u16> = line
        .split(',')
        .map(|f| {
            f.trim()
                .parse::<u16>()
                .map_err(|_| format!("not a number: {f:?}"))
        })
        .collect::<Result<_, _>>()?;
    let Some((&label, pixels)) = values
        .split_last()
        .filter(|_| values.len() == SIDE * SIDE + 1)
    else {
        return Err(format!(
            "expected {} values, found {}",
            SIDE * SIDE + 1,
            values.len()
        ));
    };
    if usize::from(label) >= NUM_CLASSES {
        return Err(format!("label {label} out of range 0..9"));
    }
    if let Some(v) = pixels.iter().find(|&&v| v > 16) {
        return Err(format!("pixel value {v} out of range 0..16"));
    }
    set.images
        .extend(pixels.iter().map(|&v| ((v * 255 + 8) / 16) as u8));
    set.labels.push(label);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Class counts 0..9 from assets/digits/PROVENANCE.md.
    const COUNTS: [usize; 10] = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180];

    #[test]
    fn counts_match_provenance() {
        let d = load().unwrap();
        assert_eq!(d.train.len() + d.test.len(), 1797);
        let train = d.train.class_counts(None);
        let test = d.test.class_counts(None);
        for c in 0..10 {
            assert_eq!(train[c] + test[c], COUNTS[c], "class {c}");
            let want = (COUNTS[c] as f64 * 0.2).round() as usize;
            assert_eq!(test[c], want, "class {c} test share");
        }
        assert_eq!(d.test.len(), 359);
        assert_eq!((d.train.channels, d.train.height, d.train.width), (1, 8, 8));
    }

    #[test]
    fn deterministic_and_scaled() {
        let (a, b) = (load().unwrap(), load().unwrap());
        assert_eq!(a.test.images, b.test.images);
        assert_eq!(a.train.labels, b.train.labels);
        let all = parse_all().unwrap();
        // First row of the CSV: 0,0,5,13,9,1,0,0,... label 0.
        assert_eq!(all.image(0)[..6], [0, 0, 80, 207, 143, 16]);
        assert_eq!(all.labels[0], 0);
        assert_eq!(*all.images.iter().max().unwrap(), 255);
    }

    #[test]
    fn bad_rows_are_rejected() {
        let mut set = parse_all().unwrap();
        let row = |last: &str| format!("{}{last}", "0,".repeat(64));
        assert!(parse_row(&row("3"), &mut set).is_ok());
        assert!(parse_row(&row("10"), &mut set)
            .unwrap_err()
            .contains("label 10"));
        assert!(parse_row("1,2,3", &mut set)
            .unwrap_err()
            .contains("expected 65 values, found 3"));
        let bad_pixel = format!("17,{}", row("1").split_once(',').unwrap().1);
        assert!(parse_row(&bad_pixel, &mut set)
            .unwrap_err()
            .contains("pixel value 17"));
    }
}
