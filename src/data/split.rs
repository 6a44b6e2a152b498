//! Seeded, stratified train/validation splits.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Indices into one [`super::ImageSet`], each list sorted ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// Stratified, seeded: the same (labels, fraction, seed) always gives the same split;
/// each class contributes round(fraction*count) (at least 1 when the class has >= 2
/// samples and fraction > 0, and at most count-1 while fraction < 1) to val. Returned
/// index lists sorted ascending.
///
/// `val_fraction` is clamped to 0..=1 (NaN counts as 0). Labels >= `num_classes` are
/// stratified as classes of their own rather than dropped.
pub fn stratified_split(labels: &[u16], num_classes: usize, val_fraction: f64, seed: u64) -> Split {
    let fraction = if val_fraction.is_nan() {
        0.0
    } else {
        val_fraction.clamp(0.0, 1.0)
    };
    let classes = labels
        .iter()
        .map(|&l| usize::from(l) + 1)
        .max()
        .unwrap_or(0)
        .max(num_classes);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[usize::from(l)].push(i);
    }

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut split = Split {
        train: Vec::new(),
        val: Vec::new(),
    };
    for mut members in by_class {
        members.shuffle(&mut rng);
        let k = val_count(members.len(), fraction);
        split.val.extend_from_slice(&members[..k]);
        split.train.extend_from_slice(&members[k..]);
    }
    split.train.sort_unstable();
    split.val.sort_unstable();
    split
}

fn val_count(count: usize, fraction: f64) -> usize {
    let k = (fraction * count as f64).round() as usize;
    if count < 2 || fraction == 0.0 {
        return k.min(count);
    }
    let most = if fraction < 1.0 { count - 1 } else { count };
    k.clamp(1, most)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<u16> {
        // Unequal classes: 50 of class 0, 30 of class 1, 7 of class 2, 1 of class 3.
        let mut l = vec![0u16; 50];
        l.extend(vec![1; 30]);
        l.extend(vec![2; 7]);
        l.push(3);
        // Interleave so classes are not contiguous.
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        l.shuffle(&mut rng);
        l
    }

    fn count(labels: &[u16], idx: &[usize], class: u16) -> usize {
        idx.iter().filter(|&&i| labels[i] == class).count()
    }

    #[test]
    fn proportions_per_class() {
        let l = labels();
        let s = stratified_split(&l, 4, 0.2, 1);
        assert_eq!(count(&l, &s.val, 0), 10);
        assert_eq!(count(&l, &s.val, 1), 6);
        assert_eq!(count(&l, &s.val, 2), 1); // round(1.4)
        assert_eq!(count(&l, &s.val, 3), 0); // a single sample stays in train
        let s = stratified_split(&l, 4, 0.01, 1);
        assert_eq!(
            count(&l, &s.val, 2),
            1,
            "at least one per class with >= 2 samples"
        );
    }

    #[test]
    fn disjoint_complete_sorted() {
        let l = labels();
        let s = stratified_split(&l, 4, 0.3, 5);
        let mut all: Vec<usize> = s.train.iter().chain(&s.val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..l.len()).collect::<Vec<_>>());
        assert!(s.train.windows(2).all(|w| w[0] < w[1]));
        assert!(s.val.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let l = labels();
        assert_eq!(
            stratified_split(&l, 4, 0.2, 3),
            stratified_split(&l, 4, 0.2, 3)
        );
        assert_ne!(
            stratified_split(&l, 4, 0.2, 3),
            stratified_split(&l, 4, 0.2, 4)
        );
    }

    #[test]
    fn edge_fractions() {
        let l = labels();
        assert!(stratified_split(&l, 4, 0.0, 0).val.is_empty());
        assert!(stratified_split(&l, 4, f64::NAN, 0).val.is_empty());
        assert!(stratified_split(&l, 4, 1.0, 0).train.is_empty());
        let s = stratified_split(&[7, 7, 7, 7], 2, 0.5, 0);
        assert_eq!(s.val.len(), 2, "labels beyond num_classes are still split");
        assert_eq!(stratified_split(&[], 3, 0.5, 0).val, Vec::<usize>::new());
    }
}
