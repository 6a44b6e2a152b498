//! L = (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)),
//! KL averaged over the batch ("batchmean", as PyTorch's `kl_div`). Without a teacher
//! L = CE. The T^2 factor keeps the soft-target gradients on the same scale as CE's
//! when T changes (Hinton et al. 2015).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Mean cross-entropy of logits `[batch, classes]` against class indices `[batch]`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let log_p = log_softmax(logits, 1);
    log_p.gather(1, targets.unsqueeze_dim(1)).mean().neg()
}

/// KL(p_t || p_s) with p = softmax(z / T), summed over classes, averaged over the batch.
pub fn kl_batchmean<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    let batch = student.dims()[0] as f64;
    let log_ps = log_softmax(student.div_scalar(temperature), 1);
    let log_pt = log_softmax(teacher.div_scalar(temperature), 1);
    let pt = log_pt.clone().exp();
    (pt * (log_pt - log_ps)).sum().div_scalar(batch)
}

/// The distillation loss. `teacher` holds logits computed without autodiff.
pub fn kd_loss<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Option<Tensor<B, 2>>,
    targets: Tensor<B, 1, Int>,
    temperature: f64,
    alpha: f64,
) -> Tensor<B, 1> {
    match teacher {
        None => cross_entropy(student, targets),
        Some(t) if alpha == 0.0 => {
            drop(t);
            cross_entropy(student, targets)
        }
        Some(t) if alpha == 1.0 => {
            kl_batchmean(student, t, temperature).mul_scalar(temperature * temperature)
        }
        Some(t) => {
            let ce = cross_entropy(student.clone(), targets);
            let kd = kl_batchmean(student, t, temperature);
            ce.mul_scalar(1.0 - alpha) + kd.mul_scalar(alpha * temperature * temperature)
        }
    }
}

/// Number of rows whose arg-max equals the target.
pub fn correct_count<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1, Int> {
    let pred: Tensor<B, 1, Int> = logits.argmax(1).squeeze_dim(1);
    pred.equal(targets).int().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{flex::FlexDevice, Flex};
    use burn::tensor::{ElementConversion, TensorData};

    type B = Flex;

    const STUDENT: [[f64; 3]; 2] = [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]];
    const TEACHER: [[f64; 3]; 2] = [[1.5, 1.0, -0.5], [-1.0, 0.5, 2.0]];
    const TARGETS: [i64; 2] = [0, 1];

    /// Hand computation in f64, independent of Burn.
    fn reference(t: f64, alpha: f64) -> f64 {
        fn log_softmax(z: &[f64; 3], t: f64) -> Vec<f64> {
            let m = z.iter().cloned().fold(f64::MIN, f64::max) / t;
            let lse = z.iter().map(|v| (v / t - m).exp()).sum::<f64>().ln() + m;
            z.iter().map(|v| v / t - lse).collect()
        }
        let n = STUDENT.len() as f64;
        let mut ce = 0.0;
        let mut kl = 0.0;
        for i in 0..STUDENT.len() {
            ce -= log_softmax(&STUDENT[i], 1.0)[TARGETS[i] as usize];
            let ls = log_softmax(&STUDENT[i], t);
            let lt = log_softmax(&TEACHER[i], t);
            kl += (0..3).map(|k| lt[k].exp() * (lt[k] - ls[k])).sum::<f64>();
        }
        (1.0 - alpha) * ce / n + alpha * t * t * kl / n
    }

    fn tensor(rows: [[f64; 3]; 2]) -> Tensor<B, 2> {
        let flat: Vec<f32> = rows.iter().flatten().map(|v| *v as f32).collect();
        Tensor::from_data(TensorData::new(flat, [2, 3]), &FlexDevice)
    }

    fn loss(t: f64, alpha: f64) -> f64 {
        let targets =
            Tensor::<B, 1, Int>::from_data(TensorData::new(TARGETS.to_vec(), [2]), &FlexDevice);
        kd_loss(tensor(STUDENT), Some(tensor(TEACHER)), targets, t, alpha)
            .into_scalar()
            .elem::<f64>()
    }

    #[test]
    fn kd_loss_matches_hand_computed_values() {
        for t in [1.0, 4.0] {
            for alpha in [0.0, 0.5, 1.0] {
                let (got, want) = (loss(t, alpha), reference(t, alpha));
                assert!(
                    (got - want).abs() < 1e-5,
                    "T={t} alpha={alpha}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn kd_loss_matches_literal_values() {
        // Computed independently in Python (float64, math module) for the tensors above.
        let cases = [
            (1.0, 0.0, 1.5754564),
            (1.0, 1.0, 0.1022569),
            (4.0, 0.5, 0.8644615),
        ];
        for (t, alpha, want) in cases {
            let got = loss(t, alpha);
            assert!(
                (got - want).abs() < 1e-5,
                "T={t} alpha={alpha}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn no_teacher_means_cross_entropy() {
        let targets =
            Tensor::<B, 1, Int>::from_data(TensorData::new(TARGETS.to_vec(), [2]), &FlexDevice);
        let got = kd_loss(tensor(STUDENT), None, targets, 4.0, 0.9)
            .into_scalar()
            .elem::<f64>();
        assert!((got - reference(4.0, 0.0)).abs() < 1e-5);
    }

    #[test]
    fn kl_of_identical_logits_is_zero() {
        let got = kl_batchmean(tensor(STUDENT), tensor(STUDENT), 3.0)
            .into_scalar()
            .elem::<f64>();
        assert!(got.abs() < 1e-6, "{got}");
    }

    #[test]
    fn correct_count_counts_argmax_hits() {
        let targets =
            Tensor::<B, 1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &FlexDevice);
        assert_eq!(
            correct_count(tensor(STUDENT), targets)
                .into_scalar()
                .elem::<i64>(),
            1
        );
    }
}
