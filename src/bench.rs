//! `selfdistill bench`: training and inference throughput of the crate's own networks,
//! measured the way the trainer runs them, in a JSON shape shared with
//! `bench/pytorch_bench.py` so that `bench/compare.sh` can put the two side by side.
//!
//! Cases, per network and batch size:
//! - `train`: student forward, cross-entropy, backward, SGD step, loss and hit count read
//!   back to the host as the trainer reads them: together, every step on the CPU and
//!   every [`GPU_READBACK_EVERY`](crate::model::ops::GPU_READBACK_EVERY) steps on a GPU
//!   (`--read-every` changes it; a repetition reads its last queued steps before its
//!   clock stops);
//! - `train-kd`: the same plus a frozen teacher forward on the inner (non-autodiff)
//!   backend and the KD loss (T = 4, alpha = 0.5, the preset defaults);
//! - `infer`: eval-mode forward on the inner backend, logits read back to the host.
//!
//! Inputs are seeded random tensors created on the device before timing (a pool of a
//! few batches, cycled), so the figures are the network's cost, not the data pipeline's.
//! Optimiser: SGD lr 0.05, momentum 0.9, dampening 0, weight decay 5e-4, as the trainer.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::distill::{correct_count, kd_loss};
use crate::model::{Arch, ModelSpec, Net, TrainBackend};
use crate::train::backend::{self, BackendKind};
use crate::train::readback::Readback;

/// Version of the JSON layout; `bench/pytorch_bench.py` writes the same.
pub const SCHEMA: u32 = 1;
/// KD settings of the `train-kd` case (the preset defaults).
pub const KD_TEMPERATURE: f64 = 4.0;
pub const KD_ALPHA: f64 = 0.5;
/// SGD settings of every training case (the trainer's, with the presets' lr).
pub const LR: f64 = 0.05;
pub const MOMENTUM: f64 = 0.9;
pub const WEIGHT_DECAY: f64 = 5e-4;
pub const CLASSES: usize = 10;
/// Distinct input batches cycled through during a case.
const POOL: usize = 4;
/// `--min-time` default: half a second keeps a repetition of the fastest case (the CNN's
/// inference, ~6 ms a step on 2 cores) well above the machine's scheduling noise.
pub const DEFAULT_MIN_REP_S: f64 = 0.5;
/// A bound on `--min-time` that catches a unit slip (ms given as s) before it runs for hours.
const MAX_MIN_REP_S: f64 = 600.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchModel {
    /// Three conv-BN-ReLU stages 32/64/128, global pool, linear (the reference net).
    Cnn,
    /// CIFAR ResNet-20, stages 16/32/64.
    Resnet20,
}

impl BenchModel {
    pub const ALL: [BenchModel; 2] = [BenchModel::Cnn, BenchModel::Resnet20];

    pub fn name(self) -> &'static str {
        match self {
            BenchModel::Cnn => "cnn",
            BenchModel::Resnet20 => "resnet20",
        }
    }

    pub fn parse(s: &str) -> Option<BenchModel> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// 3x32x32 input, 10 classes.
    pub fn spec(self) -> ModelSpec {
        let arch = match self {
            BenchModel::Cnn => Arch::Cnn,
            BenchModel::Resnet20 => Arch::Resnet20,
        };
        ModelSpec {
            arch,
            width: arch.default_width(),
            channels: 3,
            height: 32,
            width_px: 32,
            num_classes: CLASSES,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchCase {
    Train,
    TrainKd,
    Infer,
}

impl BenchCase {
    pub const ALL: [BenchCase; 3] = [BenchCase::Train, BenchCase::TrainKd, BenchCase::Infer];

    pub fn name(self) -> &'static str {
        match self {
            BenchCase::Train => "train",
            BenchCase::TrainKd => "train-kd",
            BenchCase::Infer => "infer",
        }
    }

    pub fn parse(s: &str) -> Option<BenchCase> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub backend: BackendKind,
    /// Rayon (flex) threads; `None` keeps rayon's default (all cores, or RAYON_NUM_THREADS).
    pub threads: Option<usize>,
    pub batches: Vec<usize>,
    pub models: Vec<BenchModel>,
    pub cases: Vec<BenchCase>,
    /// Timed steps per repetition: the least, see `min_rep_s`.
    pub steps: usize,
    /// A repetition goes on past `steps` until it has run this long (seconds), so that a
    /// fast case (the CNN's inference: ~6 ms a step) is not timed over a few tens of ms.
    pub min_rep_s: f64,
    /// Untimed steps before the first repetition of each case.
    pub warmup: usize,
    pub reps: usize,
    pub seed: u64,
    /// Training steps per read of loss and hit count; `None`: the backend's, what the
    /// trainer uses ([`READBACK_EVERY`](crate::model::KernelBackend::READBACK_EVERY)).
    pub read_every: Option<usize>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            backend: BackendKind::Cpu,
            threads: None,
            batches: vec![64, 128],
            models: BenchModel::ALL.to_vec(),
            cases: BenchCase::ALL.to_vec(),
            steps: 10,
            min_rep_s: DEFAULT_MIN_REP_S,
            warmup: 2,
            reps: 3,
            seed: 0,
            read_every: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub logical_cpus: usize,
    pub os: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            logical_cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

/// One (model, case, batch): the median over repetitions and every repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    pub model: String,
    pub case: String,
    pub batch: usize,
    pub steps_per_s: f64,
    pub images_per_s: f64,
    pub reps_steps_per_s: Vec<f64>,
    /// Steps timed in each repetition (at least `steps`; more where `min_rep_s` asked).
    /// Empty in reports written before the field existed.
    #[serde(default)]
    pub reps_steps: Vec<usize>,
    /// Training loss of the last step (training cases only): a sanity check, not a metric.
    pub last_loss: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub schema: u32,
    /// "selfdistill" or "pytorch".
    pub framework: String,
    /// e.g. "selfdistill 0.1.0 (burn 0.21.0, flex)" or "torch 2.15.0".
    pub version: String,
    /// "cpu" or "cuda".
    pub backend: String,
    /// Compute threads actually in use (rayon pool size / torch.get_num_threads()).
    pub threads: usize,
    pub machine: Machine,
    /// RFC 3339, UTC.
    pub date: String,
    pub steps: usize,
    /// Least seconds per repetition (0 in reports written before the field existed).
    #[serde(default)]
    pub min_rep_s: f64,
    pub warmup: usize,
    pub reps: usize,
    /// Training steps per read of loss and hit count (1 in reports written before the
    /// field existed, which read every step).
    #[serde(default = "crate::train::readback::every_step")]
    pub read_every: usize,
    pub results: Vec<BenchResult>,
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Sizes the global rayon pool (used by flex). The pool can be built once per process;
/// later calls (tests running several benches) keep the first size. Returns the size in use.
pub fn set_threads(threads: Option<usize>) -> usize {
    if let Some(n) = threads {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    rayon::current_num_threads()
}

/// Runs every requested case; `progress` receives one line per finished case.
pub fn run(opts: &BenchOptions, mut progress: impl FnMut(&BenchResult)) -> Result<BenchReport> {
    if opts.steps == 0 || opts.reps == 0 {
        bail!("--steps and --reps must be at least 1");
    }
    if !(opts.min_rep_s.is_finite() && (0.0..=MAX_MIN_REP_S).contains(&opts.min_rep_s)) {
        bail!(
            "--min-time must be between 0 and {MAX_MIN_REP_S} seconds, got {}",
            opts.min_rep_s
        );
    }
    if opts.batches.is_empty() || opts.batches.contains(&0) {
        bail!("--batch needs one or more sizes of at least 1");
    }
    if opts.read_every == Some(0) {
        bail!("--read-every must be at least 1");
    }
    if opts.models.is_empty() || opts.cases.is_empty() {
        bail!("nothing to measure: give at least one model and one case");
    }
    backend::check_available(opts.backend)?;
    let threads = set_threads(opts.threads);
    let (results, read_every) = match opts.backend {
        BackendKind::Cpu => {
            use burn::backend::{flex::FlexDevice, Autodiff, Flex};
            run_on::<Autodiff<Flex>>(&FlexDevice, opts, &mut progress)
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            use burn::backend::Autodiff;
            run_on::<Autodiff<backend::gpu::Gpu>>(&backend::gpu::device(), opts, &mut progress)
        }
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => unreachable!("check_available rejects cuda without the feature"),
    };
    let backend_note = match opts.backend {
        BackendKind::Cpu => "flex",
        BackendKind::Cuda => "cuda",
    };
    Ok(BenchReport {
        schema: SCHEMA,
        framework: "selfdistill".into(),
        version: format!(
            "selfdistill {} (burn 0.21.0, {backend_note})",
            env!("CARGO_PKG_VERSION")
        ),
        backend: opts.backend.name().into(),
        threads,
        machine: Machine::detect(),
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        steps: opts.steps,
        min_rep_s: opts.min_rep_s,
        warmup: opts.warmup,
        reps: opts.reps,
        read_every,
        results,
    })
}

/// The results, and the steps per read they used.
fn run_on<B: TrainBackend>(
    device: &B::Device,
    opts: &BenchOptions,
    progress: &mut impl FnMut(&BenchResult),
) -> (Vec<BenchResult>, usize) {
    let read_every = opts.read_every.unwrap_or(B::READBACK_EVERY);
    let mut out = Vec::new();
    for &model in &opts.models {
        for &batch in &opts.batches {
            for &case in &opts.cases {
                // As training runs (see `pool`).
                let r = crate::pool::run_on_pool(|| {
                    run_case::<B>(device, opts, model, case, batch, read_every)
                });
                progress(&r);
                out.push(r);
            }
        }
    }
    (out, read_every)
}

/// The trainer's optimiser at its presets' settings.
pub fn optimizer_config() -> SgdConfig {
    SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(MOMENTUM)
                .with_dampening(0.0),
        ))
        .with_weight_decay(Some(WeightDecayConfig::new(WEIGHT_DECAY as f32)))
}

/// Seeded host inputs: `POOL` batches of uniform [-1, 1) images and uniform labels.
pub fn synthetic_batches(batch: usize, seed: u64) -> Vec<(Vec<f32>, Vec<i64>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..POOL)
        .map(|_| {
            let x = (0..batch * 3 * 32 * 32)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let y = (0..batch)
                .map(|_| rng.random_range(0..CLASSES as i64))
                .collect();
            (x, y)
        })
        .collect()
}

fn run_case<B: TrainBackend>(
    device: &B::Device,
    opts: &BenchOptions,
    model: BenchModel,
    case: BenchCase,
    batch: usize,
    read_every: usize,
) -> BenchResult {
    let spec = model.spec();
    let inputs: Vec<(Tensor<B, 4>, Tensor<B, 1, Int>)> =
        synthetic_batches(batch, opts.seed ^ 0xbe_4c4)
            .into_iter()
            .map(|(x, y)| {
                (
                    Tensor::from_data(TensorData::new(x, [batch, 3, 32, 32]), device),
                    Tensor::from_data(TensorData::new(y, [batch]), device),
                )
            })
            .collect();
    let mut student: Net<B> = spec.init_seeded::<B>(device, opts.seed);
    let teacher: Option<Net<B::InnerBackend>> =
        (case == BenchCase::TrainKd).then(|| spec.init_seeded::<B>(device, opts.seed + 1).valid());
    let mut optim = optimizer_config().init::<B, Net<B>>();
    let eval_net = (case == BenchCase::Infer).then(|| student.valid());
    // Shared by the step and the end of a repetition.
    let last_loss = Cell::new(None);
    let reads = RefCell::new(Readback::<B::InnerBackend, ()>::new(read_every));
    let mut i = 0usize;
    let reps = {
        let mut step = |student: Net<B>| -> Net<B> {
            // As the trainer does: the step's regions find the pool's threads awake.
            let _warm = B::keep_pool_warm();
            let (x, y) = inputs[i % POOL].clone();
            i += 1;
            match &eval_net {
                Some(net) => {
                    let logits = net.forward(x.inner());
                    let _ = logits.into_data();
                    student
                }
                None => {
                    let logits = student.forward(x.clone());
                    let teacher_logits = teacher
                        .as_ref()
                        .map(|t| Tensor::<B, 2>::from_inner(t.forward(x.inner())));
                    let loss = kd_loss(
                        logits.clone(),
                        teacher_logits,
                        y.clone(),
                        KD_TEMPERATURE,
                        KD_ALPHA,
                    );
                    let correct = correct_count(logits.inner(), y.inner());
                    let grads = GradientsParams::from_grads(loss.backward(), &student);
                    let student = optim.step(LR, student, grads);
                    read(&reads, Some((loss.inner(), correct)), &last_loss);
                    student
                }
            }
        };
        for _ in 0..opts.warmup {
            student = step(student);
        }
        // Timing starts with nothing queued; a repetition ends by reading its queue.
        read(&reads, None, &last_loss);
        let finish = |student: Net<B>| {
            read(&reads, None, &last_loss);
            student
        };
        let min_time = Duration::from_secs_f64(opts.min_rep_s);
        let mut reps = Vec::with_capacity(opts.reps);
        for _ in 0..opts.reps {
            let (s, n, elapsed) = timed_rep(student, opts.steps, min_time, &mut step, finish);
            student = s;
            reps.push((n as f64 / elapsed.as_secs_f64(), n));
        }
        reps
    };
    let (reps, reps_steps): (Vec<f64>, Vec<usize>) = reps.into_iter().unzip();
    let steps_per_s = median(&reps);
    BenchResult {
        model: model.name().into(),
        case: case.name().into(),
        batch,
        steps_per_s,
        images_per_s: steps_per_s * batch as f64,
        reps_steps_per_s: reps,
        reps_steps,
        last_loss: last_loss.get(),
    }
}

/// Queues a training step's loss and hit count (`None`: reads what is queued), keeping
/// the last loss read.
fn read<B: Backend>(
    reads: &RefCell<Readback<B, ()>>,
    step: Option<(Tensor<B, 1>, Tensor<B, 1, Int>)>,
    last_loss: &Cell<Option<f64>>,
) {
    let mut reads = reads.borrow_mut();
    let done = match step {
        Some((loss, correct)) => reads.push(loss, correct, ()),
        None => reads.drain(),
    };
    if let Some(last) = done.last() {
        last_loss.set(Some(last.loss));
    }
}

/// One repetition: `step` runs at least `min_steps` times and until `min_time` has passed
/// (whole steps only), then `finish` (which waits for work the steps left queued) runs
/// inside the timed span. Returns the state, the steps run and the time they took.
pub fn timed_rep<S>(
    mut state: S,
    min_steps: usize,
    min_time: Duration,
    mut step: impl FnMut(S) -> S,
    finish: impl FnOnce(S) -> S,
) -> (S, usize, Duration) {
    let start = Instant::now();
    let mut n = 0;
    loop {
        state = step(state);
        n += 1;
        if n >= min_steps && start.elapsed() >= min_time {
            let state = finish(state);
            return (state, n, start.elapsed());
        }
    }
}

/// The table printed by `selfdistill bench`.
pub fn table(report: &BenchReport) -> String {
    let mut s = format!(
        "{} · backend {} · {} threads · {} ({} logical CPUs) · {}\n{} timed steps (and at least {} s) x {} reps (median), {} warm-up, loss read every {} step(s)\n",
        report.version,
        report.backend,
        report.threads,
        report.machine.cpu,
        report.machine.logical_cpus,
        report.date,
        report.steps,
        report.min_rep_s,
        report.reps,
        report.warmup,
        report.read_every
    );
    s.push_str(&format!(
        "{:<10} {:<9} {:>6} {:>10} {:>10}  {}\n",
        "model", "case", "batch", "steps/s", "images/s", "reps (steps/s)"
    ));
    for r in &report.results {
        s.push_str(&result_line(r));
        s.push('\n');
    }
    s
}

pub fn result_line(r: &BenchResult) -> String {
    let reps: Vec<String> = r
        .reps_steps_per_s
        .iter()
        .map(|v| format!("{v:.3}"))
        .collect();
    format!(
        "{:<10} {:<9} {:>6} {:>10.3} {:>10.1}  {}",
        r.model,
        r.case,
        r.batch,
        r.steps_per_s,
        r.images_per_s,
        reps.join(" ")
    )
}

/// Parses a comma-separated list with `parse`, naming the bad item.
pub fn parse_list<T>(s: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| parse(p).with_context(|| format!("unknown {what} {p:?}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repetition_runs_the_least_steps_and_at_least_the_least_time() {
        // No time asked: exactly the steps, the state threaded through each.
        let (s, n, _) = timed_rep(0u32, 5, Duration::ZERO, |s| s + 1, |s| s);
        assert_eq!((s, n), (5, 5));
        // `finish` runs once, after the last step, and its time counts.
        let (s, n, elapsed) = timed_rep(
            0u32,
            2,
            Duration::ZERO,
            |s| s + 1,
            |s| {
                std::thread::sleep(Duration::from_millis(15));
                s * 10
            },
        );
        assert_eq!((s, n), (20, 2));
        assert!(elapsed >= Duration::from_millis(15), "{elapsed:?}");
        // Each step sleeps at least 2 ms: 20 ms need 3 steps or more and at most 10, and
        // the repetition stops at the first step past 20 ms.
        let min_time = Duration::from_millis(20);
        let (s, n, elapsed) = timed_rep(
            0u32,
            3,
            min_time,
            |s| {
                std::thread::sleep(Duration::from_millis(2));
                s + 1
            },
            |s| s,
        );
        assert_eq!(s as usize, n);
        assert!((3..=10).contains(&n), "{n} steps");
        assert!(elapsed >= min_time, "{elapsed:?}");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn lists_parse_and_name_bad_items() {
        assert_eq!(
            parse_list("cnn, resnet20", "model", BenchModel::parse).unwrap(),
            vec![BenchModel::Cnn, BenchModel::Resnet20]
        );
        let e = parse_list("cnn,vgg", "model", BenchModel::parse).unwrap_err();
        assert!(e.to_string().contains("\"vgg\""), "{e}");
        assert_eq!(
            parse_list("train-kd", "case", BenchCase::parse).unwrap(),
            vec![BenchCase::TrainKd]
        );
    }

    #[test]
    fn synthetic_batches_are_seeded() {
        let a = synthetic_batches(2, 7);
        assert_eq!(a, synthetic_batches(2, 7));
        assert_ne!(a, synthetic_batches(2, 8));
        assert_eq!(a[0].0.len(), 2 * 3 * 32 * 32);
        assert!(a[0].1.iter().all(|&y| (0..CLASSES as i64).contains(&y)));
    }
}
