//! From `u8` images to normalised `f32` batches: per-channel normalisation, CIFAR-style
//! augmentation (pad + random crop, horizontal flip) and epoch shuffling.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::ImageSet;

/// Smallest standard deviation used, so a constant channel does not divide by zero.
const MIN_STD: f32 = 1e-3;

/// Per-channel mean and standard deviation, in `[0, 1]` pixel units.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalizer {
    /// Statistics of the images at `indices` (normally the training split only, so
    /// validation and test data do not leak into them). std is floored at 1e-3; with no
    /// indices the result is mean 0, std 1 (pixels merely scaled to `[0, 1]`).
    pub fn fit(set: &ImageSet, indices: &[usize]) -> Normalizer {
        let c = set.channels;
        let plane = set.height * set.width;
        let mut sum = vec![0f64; c];
        let mut sum_sq = vec![0f64; c];
        let mut n = 0usize;
        for &i in indices.iter().filter(|&&i| i < set.len()) {
            for (ch, pixels) in set.image(i).chunks_exact(plane.max(1)).enumerate() {
                let (s, q) = pixels.iter().fold((0u64, 0u64), |(s, q), &p| {
                    let p = u64::from(p);
                    (s + p, q + p * p)
                });
                sum[ch] += s as f64;
                sum_sq[ch] += q as f64;
            }
            n += plane;
        }
        if n == 0 {
            return Normalizer::identity(c);
        }
        let (mut mean, mut std) = (Vec::with_capacity(c), Vec::with_capacity(c));
        for ch in 0..c {
            let m = sum[ch] / n as f64 / 255.0;
            let var = (sum_sq[ch] / n as f64 / (255.0 * 255.0) - m * m).max(0.0);
            mean.push(m as f32);
            std.push((var.sqrt() as f32).max(MIN_STD));
        }
        Normalizer { mean, std }
    }

    /// Mean 0, std 1 for each of `channels`.
    pub fn identity(channels: usize) -> Normalizer {
        Normalizer {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// (scale, offset) per channel so that `u8 * scale + offset` is the normalised value.
    /// Channels the normaliser lacks are only scaled to [0,1].
    fn affine(&self, channels: usize) -> Vec<(f32, f32)> {
        (0..channels)
            .map(|c| {
                let mean = self.mean.get(c).copied().unwrap_or(0.0);
                let std = self.std.get(c).copied().unwrap_or(1.0).max(MIN_STD);
                (1.0 / (255.0 * std), -mean / std)
            })
            .collect()
    }
}

/// Training-time augmentation: a random `pad`-pixel crop (shift) and a horizontal flip
/// with probability 0.5. Pixels shifted in from outside the image are 0 in normalised
/// space, i.e. the channel mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    pub pad: usize,
    pub flip: bool,
}

impl Augment {
    /// The usual CIFAR recipe: pad 4, flip.
    pub const CIFAR: Augment = Augment { pad: 4, flip: true };
}

/// Where one output image reads from: a shift of the source and an optional mirror.
#[derive(Debug, Clone, Copy, Default)]
struct View {
    dx: isize,
    dy: isize,
    flip: bool,
}

impl View {
    fn random(aug: &Augment, rng: &mut ChaCha8Rng) -> View {
        let pad = aug.pad as i64;
        let mut shift = || {
            if pad > 0 {
                rng.random_range(-pad..=pad) as isize
            } else {
                0
            }
        };
        let (dx, dy) = (shift(), shift());
        let flip = aug.flip && rng.random_bool(0.5);
        View { dx, dy, flip }
    }
}

/// Fills `out` (cleared first, capacity reused) with the normalised NCHW f32 batch for
/// `indices`, and `labels_out` with their labels as i64. When `augment` is Some, applies
/// random crop/flip drawn from `rng`; with None it is deterministic.
///
/// Panics if an index is out of range (a caller bug: indices come from splits of `set`).
pub fn fill_batch(
    set: &ImageSet,
    indices: &[usize],
    norm: &Normalizer,
    mut augment: Option<(&Augment, &mut ChaCha8Rng)>,
    out: &mut Vec<f32>,
    labels_out: &mut Vec<i64>,
) {
    out.clear();
    labels_out.clear();
    out.reserve(indices.len() * set.image_len());
    labels_out.reserve(indices.len());
    let affine = norm.affine(set.channels);
    for &i in indices {
        let view = match augment.as_mut() {
            Some((aug, rng)) => View::random(aug, rng),
            None => View::default(),
        };
        write_image(set, set.image(i), &affine, view, out);
        labels_out.push(i64::from(set.labels[i]));
    }
}

/// Appends one normalised image: output pixel (y, x) reads source (y + dy, x' + dx),
/// where x' is x or its mirror; 0 where that is outside the source. Row by row over the
/// columns that read the source: a branch and a push per pixel were ~2% of a
/// Fashion-MNIST training run, serial on the training thread.
fn write_image(set: &ImageSet, src: &[u8], affine: &[(f32, f32)], view: View, out: &mut Vec<f32>) {
    let (h, w) = (set.height, set.width);
    let (wi, dx) = (w as isize, view.dx);
    // x' in lo..hi reads source column x' + dx inside the row.
    let (lo, hi) = ((-dx).clamp(0, wi) as usize, (wi - dx).clamp(0, wi) as usize);
    for (plane, &(scale, offset)) in src.chunks_exact((h * w).max(1)).zip(affine) {
        for y in 0..h {
            let start = out.len();
            out.resize(start + w, 0.0);
            let sy = y as isize + view.dy;
            if !(0..h as isize).contains(&sy) || lo >= hi {
                continue;
            }
            let row = &plane[sy as usize * w..][..w];
            let src = &row[(lo as isize + dx) as usize..(hi as isize + dx) as usize];
            let value = |p: &u8| f32::from(*p) * scale + offset;
            let dst = &mut out[start..];
            if view.flip {
                // x = w - 1 - x': as x rises, x' falls from hi - 1 to lo.
                for (d, p) in dst[w - hi..w - lo].iter_mut().zip(src.iter().rev()) {
                    *d = value(p);
                }
            } else {
                for (d, p) in dst[lo..hi].iter_mut().zip(src) {
                    *d = value(p);
                }
            }
        }
    }
}

/// Deterministic epoch order: a permutation of `indices` from ChaCha8Rng seeded with `seed`.
pub fn shuffled(indices: &[usize], seed: u64) -> Vec<usize> {
    let mut v = indices.to_vec();
    v.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 2-channel 2x3 images with distinct pixels.
    fn tiny() -> ImageSet {
        #[rustfmt::skip]
        let images = vec![
            // image 0: channel 0, channel 1
            0, 51, 102, 153, 204, 255,   10, 10, 10, 10, 10, 10,
            // image 1
            255, 255, 255, 0, 0, 0,      10, 10, 10, 10, 10, 10,
        ];
        ImageSet {
            images,
            labels: vec![3, 1],
            channels: 2,
            height: 2,
            width: 3,
            num_classes: 4,
        }
    }

    #[test]
    fn fit_statistics() {
        let set = tiny();
        let n = Normalizer::fit(&set, &[0]);
        assert!((n.mean[0] - 0.5).abs() < 1e-6);
        let expected_std =
            ((0..6).map(|k| (k as f32 * 0.2 - 0.5).powi(2)).sum::<f32>() / 6.0).sqrt();
        assert!((n.std[0] - expected_std).abs() < 1e-5, "{:?}", n);
        assert!((n.mean[1] - 10.0 / 255.0).abs() < 1e-6);
        assert_eq!(n.std[1], MIN_STD, "constant channel floored");
        assert_eq!(Normalizer::fit(&set, &[]), Normalizer::identity(2));
    }

    #[test]
    fn normalises_and_copies_labels() {
        let set = tiny();
        let norm = Normalizer {
            mean: vec![0.5, 0.0],
            std: vec![0.25, 1.0],
        };
        let (mut out, mut labels) = (vec![9.0; 100], vec![7]);
        fill_batch(&set, &[1, 0], &norm, None, &mut out, &mut labels);
        assert_eq!(out.len(), 2 * 12);
        assert_eq!(labels, vec![1, 3]);
        // image 1 comes first: 255 -> (1 - 0.5) / 0.25 = 2, 0 -> -2.
        assert!((out[0] - 2.0).abs() < 1e-5 && (out[3] + 2.0).abs() < 1e-5);
        assert!((out[6] - 10.0 / 255.0).abs() < 1e-6);
        // image 0, channel 0: 0, 0.2, ..., 1.0 -> (v - 0.5) / 0.25.
        for k in 0..6 {
            let want = (k as f32 * 0.2 - 0.5) / 0.25;
            assert!(
                (out[12 + k] - want).abs() < 1e-5,
                "pixel {k}: {}",
                out[12 + k]
            );
        }
    }

    #[test]
    fn without_augment_is_deterministic() {
        let set = tiny();
        let norm = Normalizer::fit(&set, &[0, 1]);
        let (mut a, mut b, mut l) = (Vec::new(), Vec::new(), Vec::new());
        fill_batch(&set, &[0, 1, 0], &norm, None, &mut a, &mut l);
        fill_batch(&set, &[0, 1, 0], &norm, None, &mut b, &mut l);
        assert_eq!(a, b);
        assert_eq!(a[..12], a[24..]);
    }

    fn mirrored(img: &[f32], w: usize) -> Vec<f32> {
        img.chunks(w)
            .flat_map(|row| row.iter().rev().copied())
            .collect()
    }

    #[test]
    fn flip_only_gives_identity_or_mirror() {
        let set = tiny();
        let norm = Normalizer::fit(&set, &[0, 1]);
        let (mut plain, mut out, mut l) = (Vec::new(), Vec::new(), Vec::new());
        fill_batch(&set, &[0], &norm, None, &mut plain, &mut l);
        let aug = Augment { pad: 0, flip: true };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (mut seen_plain, mut seen_flip) = (false, false);
        for _ in 0..40 {
            fill_batch(&set, &[0], &norm, Some((&aug, &mut rng)), &mut out, &mut l);
            if out == plain {
                seen_plain = true;
            } else {
                assert_eq!(out, mirrored(&plain, 3));
                seen_flip = true;
            }
        }
        assert!(seen_plain && seen_flip);
    }

    #[test]
    fn crop_keeps_shape_and_pads_with_zero() {
        let set = tiny();
        let norm = Normalizer::fit(&set, &[0, 1]);
        let aug = Augment {
            pad: 4,
            flip: false,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (mut out, mut l) = (Vec::new(), Vec::new());
        let mut saw_zero_pad = false;
        for _ in 0..20 {
            fill_batch(
                &set,
                &[0, 1],
                &norm,
                Some((&aug, &mut rng)),
                &mut out,
                &mut l,
            );
            assert_eq!(out.len(), 24);
            assert_eq!(l, vec![3, 1]);
            saw_zero_pad |= out.contains(&0.0);
        }
        assert!(
            saw_zero_pad,
            "a pad of 4 on a 2x3 image must shift in padding"
        );
        // Same rng seed -> same augmented batch.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut r1 = ChaCha8Rng::seed_from_u64(3);
        let mut r2 = ChaCha8Rng::seed_from_u64(3);
        fill_batch(&set, &[0, 1], &norm, Some((&aug, &mut r1)), &mut a, &mut l);
        fill_batch(&set, &[0, 1], &norm, Some((&aug, &mut r2)), &mut b, &mut l);
        assert_eq!(a, b);
    }

    #[test]
    fn crop_shifts_content() {
        // 1x1x4x4 image with a single bright pixel: any crop moves it by (dx, dy) or drops it.
        let mut images = vec![0u8; 16];
        images[5] = 255; // (1, 1)
        let set = ImageSet {
            images,
            labels: vec![0],
            channels: 1,
            height: 4,
            width: 4,
            num_classes: 1,
        };
        let norm = Normalizer::identity(1);
        let aug = Augment {
            pad: 1,
            flip: false,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (mut out, mut l) = (Vec::new(), Vec::new());
        let mut positions = std::collections::BTreeSet::new();
        for _ in 0..60 {
            fill_batch(&set, &[0], &norm, Some((&aug, &mut rng)), &mut out, &mut l);
            let lit: Vec<usize> = (0..16).filter(|&k| out[k] > 0.5).collect();
            assert_eq!(lit.len(), 1);
            positions.insert(lit[0]);
        }
        // Source (1,1) shifted by -1..=1 in each axis lands on rows/cols 0..=2: 9 places.
        assert_eq!(
            positions,
            [0, 1, 2, 4, 5, 6, 8, 9, 10].into_iter().collect()
        );
    }

    /// Every shift (past the edges too) and both mirrors, against the pixel-by-pixel
    /// definition, on a non-square 2-channel image.
    #[test]
    fn shifted_and_mirrored_images_match_the_definition() {
        let (c, h, w) = (2usize, 3usize, 5usize);
        let set = ImageSet {
            images: (0..c * h * w).map(|i| (i * 37 % 251) as u8).collect(),
            labels: vec![0],
            channels: c,
            height: h,
            width: w,
            num_classes: 2,
        };
        let affine = [(0.5f32, -1.25f32), (2.0, 0.75)];
        for dx in -6isize..=6 {
            for dy in -4isize..=4 {
                for flip in [false, true] {
                    let view = View { dx, dy, flip };
                    let mut got = vec![9.0];
                    write_image(&set, set.image(0), &affine, view, &mut got);
                    let mut want = vec![9.0];
                    for (ch, &(scale, offset)) in affine.iter().enumerate() {
                        for y in 0..h as isize {
                            for x in 0..w as isize {
                                let x = if flip { w as isize - 1 - x } else { x };
                                let (sy, sx) = (y + dy, x + dx);
                                let inside =
                                    (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                                want.push(if inside {
                                    let p = set.images[(ch * h + sy as usize) * w + sx as usize];
                                    f32::from(p) * scale + offset
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                    assert_eq!(got, want, "dx {dx}, dy {dy}, flip {flip}");
                }
            }
        }
    }

    #[test]
    fn shuffled_is_a_seeded_permutation() {
        let idx: Vec<usize> = (10..60).collect();
        let a = shuffled(&idx, 5);
        assert_eq!(a, shuffled(&idx, 5));
        assert_ne!(a, shuffled(&idx, 6));
        assert_ne!(a, idx);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, idx);
    }
}
