//! # The synthetic dataset
//!
//! A built-in, file-free dataset of grey `image_size` x `image_size` pictures (12..=64
//! pixels, default 16) in 10 classes of simple drawn shapes. It is made to be learnable
//! by a small CNN but not perfectly, and so that classes resemble each other in groups,
//! which gives a teacher's soft labels something to say ("dark knowledge").
//!
//! | class | name       | shape                                  | confusable with        |
//! |-------|------------|----------------------------------------|------------------------|
//! | 0     | `ring`     | circle outline                         | disc, square           |
//! | 1     | `vbar`     | one vertical bar                       | bars, plus, corner     |
//! | 2     | `hbar`     | one horizontal bar                     | plus, corner           |
//! | 3     | `plus`     | vertical + horizontal bar              | cross, vbar, hbar      |
//! | 4     | `cross`    | two diagonal bars (an X)               | plus, triangle         |
//! | 5     | `square`   | square outline                         | ring, bars, corner     |
//! | 6     | `triangle` | triangle outline                       | cross, square          |
//! | 7     | `disc`     | filled disc                            | ring                   |
//! | 8     | `bars`     | two parallel vertical bars             | vbar, square           |
//! | 9     | `corner`   | an "L": vertical bar + bottom bar      | square, vbar, hbar     |
//!
//! How one image is drawn:
//! 1. The shape is defined in a frame where the canvas spans -1..1, extent about ±0.55.
//! 2. Strokes are cut into pieces of at most 0.15 units; 0 to 2 random gaps of 1 or 2
//!    pieces each are erased ("stroke noise"), so outlines are often broken.
//! 3. A random pose is applied: scale 0.7..1.1, rotation ±20° (plus and cross stay
//!    45° apart but come within 5° of each other's nearest pose), translation ±15% of
//!    the image size in x and y.
//! 4. Strokes are rendered anti-aliased with a width of 7..12% of the image size;
//!    coverage is 1 inside, fading linearly over one pixel at the edge.
//! 5. pixel = background (0..0.15) + contrast (0.5..1.0) * coverage + Gaussian noise with
//!    a standard deviation drawn per image from 0.15..0.25; clamped to 0..1, stored as
//!    u8 (x255, rounded).
//!
//! Every random choice is uniform over the range given. Labels are balanced (sample `i`
//! has class `i % 10` before the order is shuffled). A fraction `label_noise` (default
//! 5%, rounded to a whole number of images) of *training* labels is then replaced by a
//! different class chosen uniformly; the images keep their true shape, and test labels
//! are always clean.
//!
//! The same `seed` always gives the same bytes. The training set, test set and label
//! noise come from three independent ChaCha8 streams of that seed, so changing
//! `train_size` or `label_noise` leaves the test set unchanged.

use std::f32::consts::PI;
use std::ops::RangeInclusive;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{DataError, DatasetKind, ImageSet, LoadedData};

pub const CLASS_NAMES: [&str; 10] = [
    "ring", "vbar", "hbar", "plus", "cross", "square", "triangle", "disc", "bars", "corner",
];
pub const NUM_CLASSES: usize = CLASS_NAMES.len();
pub const IMAGE_SIZES: RangeInclusive<usize> = 12..=64;
/// Upper bound on either set's size, to keep memory sane (64x64 x 1M = 4 GiB).
pub const MAX_SAMPLES: usize = 1_000_000;

const STREAM_TRAIN: u64 = 1;
const STREAM_TEST: u64 = 2;
const STREAM_LABEL_NOISE: u64 = 3;

/// Longest stroke piece (in canvas half-widths); gaps erase whole pieces.
const PIECE: f32 = 0.15;

/// Settings of the synthetic dataset (see the module documentation).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SyntheticConfig {
    pub train_size: usize,
    pub test_size: usize,
    pub image_size: usize,
    pub seed: u64,
    /// Fraction of training labels replaced by a wrong class, 0..=1.
    pub label_noise: f32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            train_size: 4000,
            test_size: 1000,
            image_size: 16,
            seed: 7,
            label_noise: 0.05,
        }
    }
}

impl SyntheticConfig {
    /// Checks the ranges documented on the fields.
    pub fn validate(&self) -> Result<(), DataError> {
        let invalid = |what: String| {
            Err(DataError::Invalid {
                dataset: DatasetKind::Synthetic.name(),
                what,
            })
        };
        if !IMAGE_SIZES.contains(&self.image_size) {
            return invalid(format!(
                "image_size {} is out of range {}..={}",
                self.image_size,
                IMAGE_SIZES.start(),
                IMAGE_SIZES.end()
            ));
        }
        for (name, n) in [
            ("train_size", self.train_size),
            ("test_size", self.test_size),
        ] {
            if !(1..=MAX_SAMPLES).contains(&n) {
                return invalid(format!("{name} {n} is out of range 1..={MAX_SAMPLES}"));
            }
        }
        if !(0.0..=1.0).contains(&self.label_noise) {
            return invalid(format!(
                "label_noise {} is out of range 0..=1",
                self.label_noise
            ));
        }
        Ok(())
    }
}

/// Generates the dataset described by `cfg`.
pub fn generate(cfg: &SyntheticConfig) -> Result<LoadedData, DataError> {
    cfg.validate()?;
    let mut train = make_set(
        cfg.image_size,
        cfg.train_size,
        &mut stream(cfg.seed, STREAM_TRAIN),
    );
    let test = make_set(
        cfg.image_size,
        cfg.test_size,
        &mut stream(cfg.seed, STREAM_TEST),
    );
    add_label_noise(
        &mut train.labels,
        cfg.label_noise,
        &mut stream(cfg.seed, STREAM_LABEL_NOISE),
    );
    Ok(LoadedData {
        kind: DatasetKind::Synthetic,
        train,
        test,
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        source: format!("generated (seed {})", cfg.seed),
    })
}

fn stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

fn make_set(size: usize, n: usize, rng: &mut ChaCha8Rng) -> ImageSet {
    let mut labels: Vec<u16> = (0..n).map(|i| (i % NUM_CLASSES) as u16).collect();
    labels.shuffle(rng);
    let mut images = Vec::with_capacity(n * size * size);
    let mut canvas = vec![0f32; size * size];
    for &label in &labels {
        draw_sample(label, size, rng, &mut canvas);
        images.extend(
            canvas
                .iter()
                .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8),
        );
    }
    ImageSet {
        images,
        labels,
        channels: 1,
        height: size,
        width: size,
        num_classes: NUM_CLASSES,
    }
}

/// Replaces round(fraction * n) labels, chosen without repetition, by another class.
fn add_label_noise(labels: &mut [u16], fraction: f32, rng: &mut ChaCha8Rng) {
    let count = ((fraction as f64 * labels.len() as f64).round() as usize).min(labels.len());
    for i in rand::seq::index::sample(rng, labels.len(), count) {
        let shift = rng.random_range(1..NUM_CLASSES as u16);
        labels[i] = (labels[i] + shift) % NUM_CLASSES as u16;
    }
}

type Pt = (f32, f32);

/// A class's drawing in the canonical frame: stroked polylines or a filled disc.
enum Shape {
    Strokes(Vec<Vec<Pt>>),
    Disc { radius: f32 },
}

fn shape(class: u16) -> Shape {
    let closed = |pts: &[Pt]| {
        let mut v = pts.to_vec();
        v.push(pts[0]);
        v
    };
    let strokes = match class {
        0 => vec![closed(
            &(0..24)
                .map(|k| {
                    let a = k as f32 * 2.0 * PI / 24.0;
                    (0.5 * a.cos(), 0.5 * a.sin())
                })
                .collect::<Vec<_>>(),
        )],
        1 => vec![vec![(0.0, -0.6), (0.0, 0.6)]],
        2 => vec![vec![(-0.6, 0.0), (0.6, 0.0)]],
        3 => vec![
            vec![(0.0, -0.55), (0.0, 0.55)],
            vec![(-0.55, 0.0), (0.55, 0.0)],
        ],
        4 => vec![
            vec![(-0.45, -0.45), (0.45, 0.45)],
            vec![(-0.45, 0.45), (0.45, -0.45)],
        ],
        5 => vec![closed(&[
            (-0.45, -0.45),
            (0.45, -0.45),
            (0.45, 0.45),
            (-0.45, 0.45),
        ])],
        6 => vec![closed(&[(0.0, -0.55), (0.5, 0.4), (-0.5, 0.4)])],
        7 => return Shape::Disc { radius: 0.35 },
        8 => vec![
            vec![(-0.25, -0.55), (-0.25, 0.55)],
            vec![(0.25, -0.55), (0.25, 0.55)],
        ],
        _ => vec![vec![(-0.4, -0.55), (-0.4, 0.45), (0.45, 0.45)]],
    };
    Shape::Strokes(strokes)
}

/// Random placement of the canonical frame on the pixel grid.
struct Pose {
    scale: f32,
    cos: f32,
    sin: f32,
    center: Pt,
}

impl Pose {
    fn random(size: usize, rng: &mut ChaCha8Rng) -> Pose {
        let half = size as f32 / 2.0;
        let angle = rng.random_range(-20f32..=20.0).to_radians();
        let shift = 0.15 * size as f32;
        Pose {
            scale: rng.random_range(0.7f32..=1.1) * half,
            cos: angle.cos(),
            sin: angle.sin(),
            center: (
                half + rng.random_range(-shift..=shift),
                half + rng.random_range(-shift..=shift),
            ),
        }
    }

    fn to_px(&self, (x, y): Pt) -> Pt {
        (
            self.center.0 + (x * self.cos - y * self.sin) * self.scale,
            self.center.1 + (x * self.sin + y * self.cos) * self.scale,
        )
    }
}

/// Draws one noisy sample of `class` into `canvas` (values roughly 0..1, unclamped).
fn draw_sample(class: u16, size: usize, rng: &mut ChaCha8Rng, canvas: &mut [f32]) {
    canvas.fill(0.0);
    let pose = Pose::random(size, rng);
    let half_width = rng.random_range(0.07f32..=0.12) * size as f32 / 2.0;
    match shape(class) {
        Shape::Strokes(lines) => {
            for (a, b) in broken_pieces(&lines, rng) {
                stroke(canvas, size, pose.to_px(a), pose.to_px(b), half_width);
            }
        }
        Shape::Disc { radius } => disc(canvas, size, pose.to_px((0.0, 0.0)), radius * pose.scale),
    }
    let background = rng.random_range(0f32..=0.15);
    let contrast = rng.random_range(0.5f32..=1.0);
    let sigma = rng.random_range(0.15f32..=0.25);
    for v in canvas.iter_mut() {
        *v = background + contrast * *v + sigma * gaussian(rng);
    }
}

/// The polylines cut into pieces of at most `PIECE`, minus 0..=2 random gaps.
fn broken_pieces(lines: &[Vec<Pt>], rng: &mut ChaCha8Rng) -> Vec<(Pt, Pt)> {
    let mut pieces = Vec::new();
    for line in lines {
        for w in line.windows(2) {
            let (a, b) = (w[0], w[1]);
            let n = ((b.0 - a.0).hypot(b.1 - a.1) / PIECE).ceil().max(1.0) as usize;
            let at = |t: f32| (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            pieces.extend((0..n).map(|k| (at(k as f32 / n as f32), at((k + 1) as f32 / n as f32))));
        }
    }
    let mut keep = vec![true; pieces.len()];
    for _ in 0..rng.random_range(0..=2) {
        let start = rng.random_range(0..pieces.len());
        let len = rng.random_range(1..=2);
        keep.iter_mut()
            .skip(start)
            .take(len)
            .for_each(|k| *k = false);
    }
    pieces
        .into_iter()
        .zip(keep)
        .filter_map(|(p, k)| k.then_some(p))
        .collect()
}

/// Pixel rows/columns within `reach` of the span lo..hi, clipped to the canvas.
fn pixel_range(lo: f32, hi: f32, reach: f32, size: usize) -> std::ops::Range<usize> {
    let start = (lo - reach).floor().max(0.0) as usize;
    let end = ((hi + reach).ceil().max(0.0) as usize).min(size);
    start..end.max(start)
}

/// Adds an anti-aliased thick segment a-b (pixel coordinates), keeping the max coverage.
fn stroke(canvas: &mut [f32], size: usize, a: Pt, b: Pt, half_width: f32) {
    let reach = half_width + 1.0;
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = (dx * dx + dy * dy).max(1e-12);
    for y in pixel_range(a.1.min(b.1), a.1.max(b.1), reach, size) {
        for x in pixel_range(a.0.min(b.0), a.0.max(b.0), reach, size) {
            let p = (x as f32 + 0.5, y as f32 + 0.5);
            let t = (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0);
            let d = (p.0 - a.0 - t * dx).hypot(p.1 - a.1 - t * dy);
            let cover = (half_width + 0.5 - d).clamp(0.0, 1.0);
            let v = &mut canvas[y * size + x];
            *v = v.max(cover);
        }
    }
}

/// Adds an anti-aliased filled disc.
fn disc(canvas: &mut [f32], size: usize, c: Pt, radius: f32) {
    for y in pixel_range(c.1, c.1, radius + 1.0, size) {
        for x in pixel_range(c.0, c.0, radius + 1.0, size) {
            let d = (x as f32 + 0.5 - c.0).hypot(y as f32 + 0.5 - c.1);
            let v = &mut canvas[y * size + x];
            *v = v.max((radius + 0.5 - d).clamp(0.0, 1.0));
        }
    }
}

/// Standard normal sample (Box-Muller; rand_distr is not a dependency).
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = 1.0 - rng.random::<f32>(); // in (0, 1], so ln is finite
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> SyntheticConfig {
        SyntheticConfig {
            train_size: 500,
            test_size: 200,
            seed,
            ..Default::default()
        }
    }

    #[test]
    fn same_seed_same_bytes_different_seed_differs() {
        let a = generate(&small(3)).unwrap();
        let b = generate(&small(3)).unwrap();
        let c = generate(&small(4)).unwrap();
        assert_eq!(
            (&a.train.images, &a.train.labels),
            (&b.train.images, &b.train.labels)
        );
        assert_eq!(a.test.images, b.test.images);
        assert_ne!(a.train.images, c.train.images);
        assert_ne!(a.test.images, c.test.images);
        assert_eq!(a.source, "generated (seed 3)");
    }

    #[test]
    fn sizes_and_balance() {
        for size in [12, 16, 33, 64] {
            let cfg = SyntheticConfig {
                image_size: size,
                label_noise: 0.0,
                ..small(1)
            };
            let d = generate(&cfg).unwrap();
            assert_eq!((d.train.len(), d.test.len()), (500, 200));
            assert_eq!(d.train.images.len(), 500 * size * size);
            assert_eq!(
                (d.train.channels, d.train.height, d.train.width),
                (1, size, size)
            );
            assert_eq!(d.train.class_counts(None), vec![50; 10]);
            assert_eq!(d.test.class_counts(None), vec![20; 10]);
            assert_ne!(
                d.train.labels[..10],
                [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                "labels shuffled"
            );
        }
        assert_eq!(generate(&small(1)).unwrap().class_names[4], "cross");
    }

    #[test]
    fn label_noise_on_train_only() {
        let clean = generate(&SyntheticConfig {
            label_noise: 0.0,
            ..Default::default()
        })
        .unwrap();
        let noisy = generate(&SyntheticConfig::default()).unwrap();
        assert_eq!(
            clean.train.images, noisy.train.images,
            "noise must not change images"
        );
        assert_eq!(
            clean.test.labels, noisy.test.labels,
            "test labels stay clean"
        );
        assert_eq!(clean.test.images, noisy.test.images);
        let flipped = clean
            .train
            .labels
            .iter()
            .zip(&noisy.train.labels)
            .filter(|(a, b)| a != b)
            .count();
        let fraction = flipped as f64 / clean.train.len() as f64;
        assert!(
            (fraction - 0.05).abs() < 0.005,
            "label noise fraction {fraction}"
        );
        // The test set does not depend on the training set's size.
        let other = generate(&SyntheticConfig {
            train_size: 123,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(other.test.images, clean.test.images);
    }

    #[test]
    fn rejects_bad_config() {
        for cfg in [
            SyntheticConfig {
                image_size: 11,
                ..Default::default()
            },
            SyntheticConfig {
                image_size: 65,
                ..Default::default()
            },
            SyntheticConfig {
                train_size: 0,
                ..Default::default()
            },
            SyntheticConfig {
                label_noise: 1.5,
                ..Default::default()
            },
            SyntheticConfig {
                label_noise: f32::NAN,
                ..Default::default()
            },
        ] {
            let err = generate(&cfg).unwrap_err();
            assert!(matches!(err, DataError::Invalid { .. }), "{err}");
            assert!(err.to_string().starts_with("synthetic: "), "{err}");
        }
    }

    /// Accuracy on the test set of a nearest-centroid classifier fit on the train set.
    pub(crate) fn nearest_centroid_accuracy(d: &LoadedData) -> f64 {
        let n = d.train.image_len();
        let mut centroids = vec![vec![0f64; n]; NUM_CLASSES];
        let counts = d.train.class_counts(None);
        for i in 0..d.train.len() {
            let c = usize::from(d.train.labels[i]);
            for (s, &p) in centroids[c].iter_mut().zip(d.train.image(i)) {
                *s += f64::from(p) / counts[c] as f64;
            }
        }
        let correct = (0..d.test.len())
            .filter(|&i| {
                let img = d.test.image(i);
                let dist = |c: &Vec<f64>| {
                    c.iter()
                        .zip(img)
                        .map(|(m, &p)| (m - f64::from(p)).powi(2))
                        .sum::<f64>()
                };
                let best = (0..NUM_CLASSES)
                    .min_by(|&a, &b| dist(&centroids[a]).total_cmp(&dist(&centroids[b])))
                    .unwrap_or(0);
                best == usize::from(d.test.labels[i])
            })
            .count();
        correct as f64 / d.test.len() as f64
    }

    #[test]
    fn learnable_but_not_trivial() {
        let d = generate(&SyntheticConfig::default()).unwrap();
        let acc = nearest_centroid_accuracy(&d);
        assert!(
            acc > 0.30 && acc < 0.95,
            "nearest-centroid test accuracy {acc}"
        );
    }
}
