//! The trainer: runs seeds x methods x generations on one thread, emitting events,
//! recording the run folder and obeying controls between steps.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use crossbeam_channel::{Receiver, Sender};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::backend::{check_available, panic_message, BackendKind};
use super::events::{
    event_channel, Control, EvalMetrics, EventSender, GenerationSummary, JobKey, Method, RunPlan,
    RunStatus, StepMetrics, TeacherSource, Ticket, TrainEvent,
};
use super::readback::{Readback, StepRead};
use super::schedule::Schedule;
use crate::data::{self, Augment, DataOptions, LoadedData, Normalizer, Split, SyntheticConfig};
use crate::distill::{correct_count, cross_entropy, kd_loss, TeacherCache};
use crate::model::{KernelBackend, ModelSpec, Net, TrainBackend};
use crate::preset::{limits, Cifar100Labels, Preset, TeacherChoice};
use crate::store::resume::{
    self as resume_store, files, BestMeta, MidJobMeta, PreviousMeta, ResumePoint, ResumeState,
};
use crate::store::{self, RunWriter};

/// Command-line overrides of a preset.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub backend: Option<BackendKind>,
    pub seed: Option<u64>,
    pub data_dir: Option<PathBuf>,
    /// Where run folders go; None = the default runs directory.
    pub runs_dir: Option<PathBuf>,
    /// Write a run folder (tests may turn it off).
    pub record: bool,
    /// Training steps per read of loss and hit count from the device; `None`: the
    /// backend's ([`KernelBackend::READBACK_EVERY`]). The numbers do not depend on it.
    pub read_every: Option<usize>,
}

/// Data ready for training: images, the validation split and normalisation.
#[derive(Debug)]
pub struct PreparedData {
    pub loaded: LoadedData,
    pub split: Split,
    pub test: Vec<usize>,
    pub norm: Normalizer,
    pub augment: Option<Augment>,
}

impl PreparedData {
    /// Carves the seeded validation split from the training set; normalisation is
    /// fitted on the training part only.
    pub fn new(loaded: LoadedData, preset: &Preset) -> PreparedData {
        let d = &preset.data;
        let mut split = data::stratified_split(
            &loaded.train.labels,
            loaded.train.num_classes,
            d.val_fraction,
            d.split_seed,
        );
        if let Some(limit) = d.train_limit {
            if limit < split.train.len() {
                let mut keep = data::shuffled(&split.train, d.split_seed ^ 0x11_7e57);
                keep.truncate(limit);
                keep.sort_unstable();
                split.train = keep;
            }
        }
        let norm = Normalizer::fit(&loaded.train, &split.train);
        let augment = preset.augment().then_some(Augment { pad: 4, flip: true });
        let test = (0..loaded.test.len()).collect();
        PreparedData {
            loaded,
            split,
            test,
            norm,
            augment,
        }
    }

    pub fn model_spec(&self, preset: &Preset) -> ModelSpec {
        let t = &self.loaded.train;
        ModelSpec {
            arch: preset.model.arch,
            width: preset.model.width(),
            channels: t.channels,
            height: t.height,
            width_px: t.width,
            num_classes: t.num_classes,
        }
    }
}

/// Loads the data for a preset (after command-line overrides).
pub fn load_data(preset: &Preset) -> Result<LoadedData> {
    let s = &preset.data.synthetic;
    let opts = DataOptions {
        data_dir: preset.data.data_dir.clone(),
        synthetic: SyntheticConfig {
            train_size: s.train_size,
            test_size: s.test_size,
            image_size: s.image_size,
            seed: s.seed,
            label_noise: s.label_noise as f32,
        },
        cifar100_coarse: preset.data.cifar100_labels == Cifar100Labels::Coarse,
    };
    Ok(data::load(preset.data.dataset, &opts)?)
}

/// A run whose inputs are checked and loaded, ready to start.
pub struct PreparedRun {
    pub preset: Preset,
    pub data: Arc<PreparedData>,
    pub writer: Option<RunWriter>,
    /// Where to continue from (`selfdistill resume`); None starts at the beginning.
    pub resume: Option<(PathBuf, ResumeState)>,
    pub faults: Faults,
    /// See [`RunOptions::read_every`].
    pub read_every: Option<usize>,
}

/// Applies overrides, checks the backend, loads the data and creates the run folder,
/// so that every input error surfaces before training starts.
pub fn prepare(mut preset: Preset, opts: &RunOptions) -> Result<PreparedRun> {
    if opts.read_every == Some(0) {
        anyhow::bail!("--read-every must be at least 1");
    }
    if let Some(b) = opts.backend {
        preset.backend = b;
    }
    if let Some(seed) = opts.seed {
        preset.run.seeds = vec![seed];
    }
    if let Some(dir) = &opts.data_dir {
        preset.data.data_dir = Some(dir.clone());
    }
    check_available(preset.backend)?;
    let loaded = load_data(&preset)?;
    let data = Arc::new(PreparedData::new(loaded, &preset));
    let writer = if opts.record {
        let runs_dir = opts
            .runs_dir
            .clone()
            .unwrap_or_else(crate::store::default_runs_dir);
        Some(RunWriter::create(&runs_dir, &preset)?)
    } else {
        None
    };
    Ok(PreparedRun {
        preset,
        data,
        writer,
        resume: None,
        faults: Faults::from_env(),
        read_every: opts.read_every,
    })
}

/// Prepares to continue a stopped, failed or killed run in its own folder, from its
/// last resume point (or from the beginning when it never reached one).
pub fn prepare_resume(run_dir: &Path, opts: &RunOptions) -> Result<PreparedRun> {
    let preset = crate::preset::load_file(&run_dir.join(store::PRESET_FILE))?;
    let writer = RunWriter::reopen(run_dir)?;
    if writer.summary().status == Some(RunStatus::Finished) {
        anyhow::bail!(
            "run {} already finished; nothing to resume",
            run_dir.display()
        );
    }
    let resume = resume_store::load(run_dir)?;
    let mut prepared = prepare(
        preset,
        &RunOptions {
            record: false,
            ..opts.clone()
        },
    )?;
    prepared.writer = Some(writer);
    prepared.resume = resume;
    Ok(prepared)
}

/// The UI's handle on a running trainer.
pub struct RunHandle {
    pub events: Receiver<TrainEvent>,
    pub controls: Sender<Control>,
    pub run_dir: Option<PathBuf>,
    pub thread: JoinHandle<RunStatus>,
}

impl PreparedRun {
    /// Starts the trainer thread.
    pub fn spawn(self) -> RunHandle {
        let (tx, events) = event_channel();
        let (controls, control_rx) = crossbeam_channel::unbounded();
        let run_dir = self.writer.as_ref().map(|w| w.dir().to_path_buf());
        // Controls may also come from `selfdistill watch` in another process, through
        // the run folder's control file.
        let done = Arc::new(AtomicBool::new(false));
        if let Some(dir) = &run_dir {
            store::follow::spawn_control_inbox(dir, controls.clone(), done.clone());
        }
        let thread = std::thread::Builder::new()
            .name("selfdistill-trainer".into())
            .spawn(move || {
                let status = self.run(tx, control_rx);
                done.store(true, Ordering::Release);
                status
            })
            .expect("spawning a thread");
        RunHandle {
            events,
            controls,
            run_dir,
            thread,
        }
    }

    /// Runs on the current thread; a panic inside becomes an error event.
    pub fn run(self, tx: EventSender, controls: Receiver<Control>) -> RunStatus {
        let PreparedRun {
            preset,
            data,
            writer,
            resume,
            faults,
            read_every,
        } = self;
        let sink = Arc::new(Mutex::new(Sink {
            tx: tx.clone(),
            store: writer,
        }));
        let started = Instant::now();
        // On a thread of the compute pool (see `pool`); a panic comes back here.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // The same trainer, monomorphised per backend.
            macro_rules! train_on {
                ($backend:ty, $device:expr) => {
                    Trainer::<burn::backend::Autodiff<$backend>>::new(
                        $device,
                        &preset,
                        &data,
                        sink.clone(),
                        controls,
                        faults,
                        read_every,
                    )
                    .run_all(resume.clone())
                };
            }
            crate::pool::run_on_pool(|| match preset.backend {
                BackendKind::Cpu => {
                    use burn::backend::{flex::FlexDevice, Flex};
                    train_on!(Flex, FlexDevice)
                }
                #[cfg(feature = "cuda")]
                BackendKind::Cuda => {
                    use super::backend::gpu;
                    train_on!(gpu::Gpu, gpu::device())
                }
                #[cfg(not(feature = "cuda"))]
                BackendKind::Cuda => Err(super::backend::BackendError::NotCompiled.into()),
            })
        }));
        let (status, error) = match outcome {
            Ok(Ok(status)) => (status, None),
            Ok(Err(e)) => (RunStatus::Failed, Some(format!("{e:#}"))),
            Err(p) => (
                RunStatus::Failed,
                Some(format!("trainer panicked: {}", panic_message(&*p))),
            ),
        };
        let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(message) = error {
            let _ = sink.emit(TrainEvent::Error { message });
        }
        // A GPU run's numbers depend on the kernels CubeCL picked; keep them with the run.
        let run_dir = sink.store.as_ref().map(|s| s.dir().to_path_buf());
        if let (Some(picks), Some(dir)) = (super::backend::autotune_cache(preset.backend), run_dir)
        {
            let message = match store::keep_autotune_picks(&picks, &dir) {
                Ok(n) => format!(
                    "{n} files of GPU kernel picks kept in {}; SELFDISTILL_CACHE_DIR={} reruns with them",
                    dir.join(store::AUTOTUNE_DIR).display(),
                    dir.display()
                ),
                Err(e) => format!("could not keep the GPU kernel picks in the run folder: {e}"),
            };
            let _ = sink.emit(TrainEvent::Log { message });
        }
        let _ = sink.emit(TrainEvent::Finished {
            status,
            wall_s: started.elapsed().as_secs_f64(),
        });
        // If the event log itself could not be written (disk full), still leave the
        // final status in summary.json; what was recorded before stays as it was.
        if let Some(store) = &mut sink.store {
            let _ = store.write_summary_status(status);
        }
        status
    }
}

/// Where events go: the run folder first (so nothing is lost), then the consumer.
struct Sink {
    tx: EventSender,
    store: Option<RunWriter>,
}

impl Sink {
    /// Records, then delivers; the consumer gets the event even when recording failed
    /// (so a full disk is reported, not silent), and the failure is returned.
    fn emit(&mut self, ev: TrainEvent) -> Result<()> {
        let recorded = match &mut self.store {
            Some(store) => store.record(&ev).context("writing the run folder"),
            None => Ok(()),
        };
        self.tx.send(ev);
        recorded
    }

    fn record_only(&mut self, ev: &TrainEvent) -> Result<()> {
        if let Some(store) = &mut self.store {
            store.record(ev).context("writing the run folder")?;
        }
        Ok(())
    }
}

/// Derives independent stream seeds (SplitMix64 finaliser over the parts).
fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for p in parts {
        h ^= p
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

const PURPOSE_INIT: u64 = 1;
const PURPOSE_ORDER: u64 = 2;
const PURPOSE_AUGMENT: u64 = 3;

/// A frozen network used as teacher, with its validation accuracy.
struct Teacher<B: KernelBackend> {
    net: Net<B>,
    val_acc: f64,
}

impl<B: KernelBackend> Clone for Teacher<B> {
    fn clone(&self) -> Self {
        Teacher {
            net: self.net.clone(),
            val_acc: self.val_acc,
        }
    }
}

/// What a finished generation hands to the next one.
struct GenerationOutcome<B: KernelBackend> {
    final_net: Teacher<B>,
    best_net: Teacher<B>,
    /// Self-distillation: the teacher held at the end (best network so far).
    teacher: Option<Teacher<B>>,
}

/// How a generation ended.
enum JobResult<B: KernelBackend> {
    Done(Box<GenerationOutcome<B>>),
    /// A stop control ended it (checkpoints and summary written).
    Stopped,
    /// The loss became NaN or infinite.
    Diverged,
}

enum Flow {
    Continue,
    Stop,
}

/// Knob values that controls change while the run goes on.
struct Knobs {
    temperature: f64,
    alpha: f64,
    paused: bool,
}

struct Trainer<'a, B: TrainBackend> {
    device: B::Device,
    preset: &'a Preset,
    data: &'a PreparedData,
    spec: ModelSpec,
    sink: Arc<Mutex<Sink>>,
    controls: Receiver<Control>,
    knobs: Knobs,
    run_step: u64,
    /// Index of the running job in the plan (for resume points).
    job_index: usize,
    pending_step: Option<StepMetrics>,
    batch: Vec<f32>,
    labels: Vec<i64>,
    faults: Faults,
    /// Training steps per read of loss and hit count.
    read_every: usize,
}

/// Environment variable that makes the trainer panic at a given run step (fault tests).
pub const FAULT_PANIC_ENV: &str = "SELFDISTILL_FAULT_PANIC_AT_STEP";
/// Environment variable that makes the loss read as NaN at a given run step.
pub const FAULT_NAN_ENV: &str = "SELFDISTILL_FAULT_NAN_AT_STEP";

/// Faults injected on purpose, to test what users would otherwise meet only by bad
/// luck (a crash, a diverging loss). Off unless set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Panic before this run step.
    pub panic_at_step: Option<u64>,
    /// Treat the loss of this run step as NaN.
    pub nan_at_step: Option<u64>,
}

impl Faults {
    /// Reads the `SELFDISTILL_FAULT_*` environment variables.
    pub fn from_env() -> Faults {
        let step = |name| std::env::var(name).ok().and_then(|v| v.parse().ok());
        Faults {
            panic_at_step: step(FAULT_PANIC_ENV),
            nan_at_step: step(FAULT_NAN_ENV),
        }
    }
}

impl<'a, B: TrainBackend> Trainer<'a, B> {
    fn new(
        device: B::Device,
        preset: &'a Preset,
        data: &'a PreparedData,
        sink: Arc<Mutex<Sink>>,
        controls: Receiver<Control>,
        faults: Faults,
        read_every: Option<usize>,
    ) -> Self {
        Trainer {
            device,
            spec: data.model_spec(preset),
            preset,
            data,
            sink,
            controls,
            knobs: Knobs {
                temperature: preset.distill.temperature,
                alpha: preset.distill.alpha,
                paused: false,
            },
            run_step: 0,
            job_index: 0,
            pending_step: None,
            batch: Vec::new(),
            labels: Vec::new(),
            faults,
            read_every: read_every.unwrap_or(B::READBACK_EVERY),
        }
    }

    fn emit(&self, ev: TrainEvent) -> Result<()> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner()).emit(ev)
    }

    fn plan(&self) -> RunPlan {
        let p = self.preset;
        let mut jobs = Vec::new();
        for &seed in &p.run.seeds {
            for &method in &p.run.methods {
                for generation in 1..=p.generations_for(method) {
                    jobs.push(JobKey {
                        seed,
                        method,
                        generation,
                    });
                }
            }
        }
        let steps_per_epoch = p.steps_per_epoch(self.data.split.train.len());
        let evals = match p.train.eval_every {
            0 => p.train.epochs,
            n => (steps_per_epoch * p.train.epochs as u64).div_ceil(n) as usize,
        };
        let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        RunPlan {
            run_id: sink
                .store
                .as_ref()
                .map(|s| s.run_id().to_string())
                .unwrap_or_else(|| "unrecorded".into()),
            preset: p.name.clone(),
            dataset: format!("{} ({})", p.data.dataset.name(), self.data.loaded.source),
            model: self.spec.describe(),
            backend: p.backend.name().into(),
            jobs,
            epochs: p.train.epochs,
            steps_per_epoch,
            evals_per_generation: evals,
            train_size: self.data.split.train.len(),
            val_size: self.data.split.val.len(),
            test_size: self.data.test.len(),
            temperature: p.distill.temperature,
            alpha: p.distill.alpha,
            run_dir: sink.store.as_ref().map(|s| s.dir().to_path_buf()),
            autotune_cache: super::backend::autotune_cache(p.backend),
            read_every: self.read_every,
        }
    }

    fn run_all(mut self, resume: Option<(PathBuf, ResumeState)>) -> Result<RunStatus> {
        let plan = self.plan();
        let jobs = plan.jobs.clone();
        self.emit(TrainEvent::Plan(plan))?;
        let mut previous: Option<GenerationOutcome<B::InnerBackend>> = None;
        let mut mid_job: Option<(PathBuf, MidJobMeta)> = None;
        let mut first = 0;
        if let Some((dir, state)) = resume {
            anyhow::ensure!(
                jobs.get(state.job_index) == Some(&state.key),
                "the resume point names job {} at position {}, which the preset's plan does not have \
                 (was preset.toml edited?)",
                state.key,
                state.job_index
            );
            first = state.job_index;
            self.run_step = state.run_step;
            self.knobs.temperature = state.temperature;
            self.knobs.alpha = state.alpha;
            let step = match &state.point {
                ResumePoint::MidJob(meta) => meta.step,
                ResumePoint::JobStart { .. } => 0,
            };
            self.emit(TrainEvent::Resumed {
                key: state.key,
                step,
            })?;
            match state.point {
                ResumePoint::MidJob(meta) => mid_job = Some((dir, meta)),
                ResumePoint::JobStart {
                    previous: Some(meta),
                } => {
                    previous = Some(self.load_previous(&dir, &meta)?);
                }
                ResumePoint::JobStart { previous: None } => {}
            }
        }
        let mut diverged: Option<(u64, Method)> = None;
        for (index, &key) in jobs.iter().enumerate().skip(first) {
            self.job_index = index;
            if key.generation == 1 {
                previous = None;
            }
            if diverged == Some((key.seed, key.method)) {
                continue;
            }
            let (source, teacher) = match (&previous, key.method) {
                (None, _) | (_, Method::Baseline) => (TeacherSource::None, None),
                (Some(prev), Method::Conventional) => match self.preset.distill.teacher {
                    TeacherChoice::Final => {
                        (TeacherSource::PreviousFinal, Some(prev.final_net.clone()))
                    }
                    TeacherChoice::Best => {
                        (TeacherSource::PreviousBest, Some(prev.best_net.clone()))
                    }
                },
                (Some(prev), Method::SelfDistill) => {
                    (TeacherSource::PreviousBest, prev.teacher.clone())
                }
            };
            let result = self.train_generation(key, source, teacher, mid_job.take())?;
            previous = match result {
                JobResult::Stopped => return Ok(RunStatus::Stopped),
                JobResult::Diverged => {
                    diverged = Some((key.seed, key.method));
                    None
                }
                JobResult::Done(outcome) => Some(*outcome),
            };
            if let Some(&next) = jobs.get(index + 1) {
                let same_method = next.seed == key.seed && next.method == key.method;
                let handed_on = previous.as_ref().filter(|_| same_method);
                self.save_job_start_point(index + 1, next, handed_on)?;
            }
        }
        Ok(RunStatus::Finished)
    }

    fn init_student(&self, key: JobKey) -> Net<B> {
        // Same (seed, generation) => same initial weights for every method.
        self.spec.init_seeded(
            &self.device,
            mix(&[key.seed, key.generation as u64, PURPOSE_INIT]),
        )
    }

    /// A network of the right shape to load a record into (the seed does not matter,
    /// but initialisation must go through the seeding lock).
    fn template<C: KernelBackend>(&self, device: &C::Device) -> Net<C> {
        self.spec.init_seeded::<C>(device, 0)
    }

    fn load_net<C: KernelBackend>(&self, path: &Path, device: &C::Device) -> Result<Net<C>> {
        Ok(self
            .template::<C>(device)
            .load_record(store::load_record::<C, _>(path, device)?))
    }

    fn optimizer_config(&self) -> SgdConfig {
        let t = &self.preset.train;
        let momentum = (t.momentum > 0.0).then(|| {
            // Burn's default dampening is 0.1; PyTorch's (and the literature's) is 0.
            MomentumConfig::new()
                .with_momentum(t.momentum)
                .with_dampening(0.0)
                .with_nesterov(t.nesterov)
        });
        let decay = (t.weight_decay > 0.0).then(|| WeightDecayConfig::new(t.weight_decay as f32));
        SgdConfig::new()
            .with_momentum(momentum)
            .with_weight_decay(decay)
    }

    fn train_generation(
        &mut self,
        key: JobKey,
        source: TeacherSource,
        mut teacher: Option<Teacher<B::InnerBackend>>,
        resume: Option<(PathBuf, MidJobMeta)>,
    ) -> Result<JobResult<B::InnerBackend>> {
        let p = self.preset;
        let data = self.data;
        let inner_device = self.device.clone();
        let mut student = self.init_student(key);
        let mut optim = self.optimizer_config().init::<B, Net<B>>();
        let steps_per_epoch = p.steps_per_epoch(data.split.train.len());
        let total_steps = steps_per_epoch * p.train.epochs as u64;
        let schedule = Schedule {
            kind: p.train.schedule,
            base_lr: p.train.lr,
            total_steps,
            steps_per_epoch,
            milestones: p.train.milestones.clone(),
            gamma: p.train.gamma,
        };
        let mut state = GenState::new();
        let mut step: u64 = 0;
        let mut started = Instant::now();
        let mut source = if teacher.is_some() {
            source
        } else {
            TeacherSource::None
        };
        let mut aug_resume: Option<(usize, u128)> = None;
        match &resume {
            None => {
                // Measure the inherited teacher instead of trusting its label: the event
                // then shows which network really teaches (and tests can check it).
                let teacher_val_acc = teacher
                    .as_ref()
                    .map(|t| self.eval_split(&t.net, EvalSet::Val).1);
                self.emit(TrainEvent::GenerationStarted {
                    key,
                    teacher: source,
                    teacher_val_acc,
                })?;
            }
            Some((dir, meta)) => {
                student = self.load_net::<B>(&dir.join(files::STUDENT), &self.device)?;
                optim = optim.load_record(store::load_record::<B, _>(
                    &dir.join(files::OPTIMIZER),
                    &self.device,
                )?);
                teacher = match meta.teacher_acc {
                    Some(val_acc) => Some(Teacher {
                        net: self.load_net(&dir.join(files::TEACHER), &inner_device)?,
                        val_acc,
                    }),
                    None => None,
                };
                state.best = match &meta.best {
                    Some(b) => Some(BestSnapshot {
                        net: self.load_net(&dir.join(files::BEST), &inner_device)?,
                        val_acc: b.val_acc,
                        step: b.step,
                        test_acc: b.test_acc,
                    }),
                    None => None,
                };
                state.replacements = meta.replacements;
                state.last_eval_step = Some(meta.step);
                state.last_val_acc = meta.last_val_acc;
                state.last_test_acc = meta.last_test_acc;
                step = meta.step;
                source = meta.source;
                started = Instant::now()
                    .checked_sub(std::time::Duration::from_secs_f64(meta.elapsed_s))
                    .unwrap_or_else(Instant::now);
                let pos = meta
                    .aug_word_pos
                    .parse::<u128>()
                    .context("resume state: aug_word_pos")?;
                aug_resume = Some((meta.aug_epoch, pos));
            }
        }

        let decide = if key.method == Method::SelfDistill {
            Decide::SelfDistill
        } else {
            Decide::BestOnly
        };
        let mut stopped = false;
        // Loss and hit counts stay on the device for a few steps (one sync per read).
        let mut reads = Readback::<B::InnerBackend, StepMeta>::new(self.read_every);
        // Without augmentation a sample's teacher logits change only with the teacher.
        // The cache is made on the first step that has a teacher: a job without one
        // (a baseline, Born-Again's first generation) never allocates it.
        let cacheable = self.data.augment.is_none();
        let cache_shape = (self.data.loaded.train.len(), self.spec.num_classes);
        let mut teacher_cache: Option<TeacherCache<B::InnerBackend>> = None;
        let mut teacher_batches = 0u64;
        let first_epoch = (step / steps_per_epoch) as usize;
        let skip_batches = (step % steps_per_epoch) as usize;
        'epochs: for epoch in first_epoch..p.train.epochs {
            let order = data::shuffled(
                &data.split.train,
                mix(&[key.seed, key.generation as u64, epoch as u64, PURPOSE_ORDER]),
            );
            let mut aug_rng = ChaCha8Rng::seed_from_u64(mix(&[
                key.seed,
                key.generation as u64,
                epoch as u64,
                PURPOSE_AUGMENT,
            ]));
            let skip = if epoch == first_epoch {
                skip_batches
            } else {
                0
            };
            if let Some((aug_epoch, pos)) = aug_resume.take() {
                if aug_epoch == epoch && skip > 0 {
                    aug_rng.set_word_pos(pos);
                }
            }
            let batches = order.len().div_ceil(p.train.batch_size);
            for (batch, chunk) in order.chunks(p.train.batch_size).enumerate().skip(skip) {
                // A control (pause, stop, a new temperature) and an injected fault find
                // every step already run reported.
                if reads.pending() > 0
                    && (self.knobs.paused
                        || !self.controls.is_empty()
                        || self.faults.panic_at_step == Some(self.run_step + 1))
                {
                    if let Some(diverged) = self.report_steps(key, reads.drain(), &mut state)? {
                        return Ok(diverged);
                    }
                }
                if let Flow::Stop = self.poll_controls(key, step + 1)? {
                    stopped = true;
                    break 'epochs;
                }
                if self.faults.panic_at_step == Some(self.run_step + 1) {
                    panic!(
                        "fault injected by {FAULT_PANIC_ENV} at run step {}",
                        self.run_step + 1
                    );
                }
                // The step's many small parallel regions find the pool's threads awake.
                let _warm = B::keep_pool_warm();
                let lr = schedule.lr_at(step);
                let (x, y) = self.make_batch(chunk, &mut aug_rng);
                let logits = student.forward(x.clone());
                let teacher_logits = teacher.as_ref().map(|t| {
                    teacher_batches += 1;
                    let forward = |x| t.net.forward(x);
                    Tensor::<B, 2>::from_inner(if cacheable {
                        let (samples, classes) = cache_shape;
                        let cache = teacher_cache.get_or_insert_with(|| {
                            TeacherCache::new(samples, classes, &inner_device)
                        });
                        // A replacement is a new teacher: its count is its version.
                        cache.logits(state.replacements as u64, chunk, x.inner(), forward)
                    } else {
                        forward(x.inner())
                    })
                });
                let has_teacher = teacher_logits.is_some();
                let loss = kd_loss(
                    logits.clone(),
                    teacher_logits,
                    y.clone(),
                    self.knobs.temperature,
                    self.knobs.alpha,
                );
                let correct = correct_count(logits.inner(), y.inner());
                let grads = GradientsParams::from_grads(loss.backward(), &student);
                student = optim.step(lr, student, grads);
                step += 1;
                self.run_step += 1;
                let meta = StepMeta {
                    step,
                    run_step: self.run_step,
                    epoch: epoch + 1,
                    lr,
                    temperature: self.knobs.temperature,
                    alpha: self.knobs.alpha,
                    has_teacher,
                    images: chunk.len(),
                };
                let read = reads.push(loss.inner(), correct, meta);
                if let Some(diverged) = self.report_steps(key, read, &mut state)? {
                    return Ok(diverged);
                }
                let eval_due = match p.train.eval_every {
                    0 => batch + 1 == batches,
                    n => step.is_multiple_of(n),
                };
                if eval_due {
                    // The evaluation reports the training loss and accuracy so far.
                    if let Some(diverged) = self.report_steps(key, reads.drain(), &mut state)? {
                        return Ok(diverged);
                    }
                    let epochs_done = step as f64 / steps_per_epoch as f64;
                    self.evaluate(
                        key,
                        &student,
                        step,
                        epochs_done,
                        lr,
                        started,
                        decide,
                        &mut teacher,
                        &mut state,
                    )?;
                    let aug = (epoch, aug_rng.get_word_pos());
                    self.save_mid_point(
                        key, step, aug, started, source, &teacher, &state, &student, &optim,
                    )?;
                }
            }
        }
        if let Some(diverged) = self.report_steps(key, reads.drain(), &mut state)? {
            return Ok(diverged);
        }
        // The final network must have numbers even when the last step was not an
        // evaluation boundary (stop, or eval_every not dividing the step count).
        if state.last_eval_step != Some(step) {
            let lr = schedule.lr_at(step.saturating_sub(1));
            let epochs_done = step as f64 / steps_per_epoch as f64;
            self.evaluate(
                key,
                &student,
                step,
                epochs_done,
                lr,
                started,
                // A stop lands off the evaluation schedule: report, decide nothing,
                // so that a resumed run continues exactly as an uninterrupted one.
                if stopped { Decide::ReportOnly } else { decide },
                &mut teacher,
                &mut state,
            )?;
            // A stop lands mid-epoch: remember where the augmentation stream was.
            let epoch = ((step.max(1) - 1) / steps_per_epoch) as usize;
            let pos = self.aug_position(key, epoch, step, steps_per_epoch);
            self.save_mid_point(
                key,
                step,
                (epoch, pos),
                started,
                source,
                &teacher,
                &state,
                &student,
                &optim,
            )?;
        }
        self.flush_pending_step(true)?;

        let final_net = Teacher {
            net: student.valid(),
            val_acc: state.last_val_acc,
        };
        let teacher_cached = teacher_cache.as_ref().map_or(0, |c| c.counts().0);
        let best = state.best.take().unwrap_or_else(|| BestSnapshot {
            net: final_net.net.clone(),
            val_acc: state.last_val_acc,
            step,
            test_acc: state.last_test_acc,
        });
        {
            let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(store) = &mut sink.store {
                store.save_checkpoint(key, "best", best.net.clone())?;
                store.save_checkpoint(key, "final", final_net.net.clone())?;
            }
        }
        self.emit(TrainEvent::GenerationFinished(GenerationSummary {
            key,
            best_val_acc: best.val_acc,
            best_step: best.step,
            test_acc_at_best: best.test_acc,
            final_val_acc: state.last_val_acc,
            final_test_acc: state.last_test_acc,
            epochs: step as f64 / steps_per_epoch as f64,
            steps: step,
            wall_s: started.elapsed().as_secs_f64(),
            teacher_replacements: state.replacements,
            stopped,
            teacher_cached_batches: teacher_cached,
            teacher_forward_batches: teacher_batches - teacher_cached,
        }))?;
        if stopped {
            return Ok(JobResult::Stopped);
        }
        Ok(JobResult::Done(Box::new(GenerationOutcome {
            best_net: Teacher {
                net: best.net,
                val_acc: best.val_acc,
            },
            final_net,
            teacher,
        })))
    }

    /// Word position of the augmentation stream after `step` (replays the epoch's
    /// draws; only used on a stop, which is rare).
    fn aug_position(&mut self, key: JobKey, epoch: usize, step: u64, steps_per_epoch: u64) -> u128 {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(&[
            key.seed,
            key.generation as u64,
            epoch as u64,
            PURPOSE_AUGMENT,
        ]));
        let Some(augment) = self.data.augment else {
            return rng.get_word_pos();
        };
        let order = data::shuffled(
            &self.data.split.train,
            mix(&[key.seed, key.generation as u64, epoch as u64, PURPOSE_ORDER]),
        );
        let done = (step - epoch as u64 * steps_per_epoch) as usize;
        for chunk in order.chunks(self.preset.train.batch_size).take(done) {
            data::fill_batch(
                &self.data.loaded.train,
                chunk,
                &self.data.norm,
                Some((&augment, &mut rng)),
                &mut self.batch,
                &mut self.labels,
            );
        }
        rng.get_word_pos()
    }

    /// Writes a resume point right after an evaluation.
    #[allow(clippy::too_many_arguments)]
    fn save_mid_point(
        &self,
        key: JobKey,
        step: u64,
        (aug_epoch, aug_pos): (usize, u128),
        started: Instant,
        source: TeacherSource,
        teacher: &Option<Teacher<B::InnerBackend>>,
        state: &GenState<B::InnerBackend>,
        student: &Net<B>,
        optim: &impl Optimizer<Net<B>, B>,
    ) -> Result<()> {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let Some(store) = sink.store.as_mut() else {
            return Ok(());
        };
        let dir = store.begin_resume_point()?;
        store::save_record::<B, _>(&dir.join(files::STUDENT), student.clone().into_record())?;
        store::save_record::<B, _>(&dir.join(files::OPTIMIZER), optim.to_record())?;
        if let Some(t) = teacher {
            store::save_record::<B::InnerBackend, _>(
                &dir.join(files::TEACHER),
                t.net.clone().into_record(),
            )?;
        }
        if let Some(b) = &state.best {
            store::save_record::<B::InnerBackend, _>(
                &dir.join(files::BEST),
                b.net.clone().into_record(),
            )?;
        }
        let meta = MidJobMeta {
            step,
            aug_epoch,
            aug_word_pos: aug_pos.to_string(),
            elapsed_s: started.elapsed().as_secs_f64(),
            source,
            teacher_acc: teacher.as_ref().map(|t| t.val_acc),
            best: state.best.as_ref().map(|b| BestMeta {
                val_acc: b.val_acc,
                step: b.step,
                test_acc: b.test_acc,
            }),
            replacements: state.replacements,
            last_val_acc: state.last_val_acc,
            last_test_acc: state.last_test_acc,
        };
        store.commit_resume_point(&dir, &self.resume_state(key, ResumePoint::MidJob(meta)))
    }

    /// Writes a resume point before job `index` starts, with what the previous
    /// generation of the same method hands on.
    fn save_job_start_point(
        &self,
        index: usize,
        key: JobKey,
        previous: Option<&GenerationOutcome<B::InnerBackend>>,
    ) -> Result<()> {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let Some(store) = sink.store.as_mut() else {
            return Ok(());
        };
        let dir = store.begin_resume_point()?;
        let meta = match previous {
            None => None,
            Some(prev) => {
                store::save_record::<B::InnerBackend, _>(
                    &dir.join(files::PREV_FINAL),
                    prev.final_net.net.clone().into_record(),
                )?;
                store::save_record::<B::InnerBackend, _>(
                    &dir.join(files::PREV_BEST),
                    prev.best_net.net.clone().into_record(),
                )?;
                if let Some(t) = &prev.teacher {
                    store::save_record::<B::InnerBackend, _>(
                        &dir.join(files::PREV_TEACHER),
                        t.net.clone().into_record(),
                    )?;
                }
                Some(PreviousMeta {
                    final_acc: prev.final_net.val_acc,
                    best_acc: prev.best_net.val_acc,
                    teacher_acc: prev.teacher.as_ref().map(|t| t.val_acc),
                })
            }
        };
        let mut state = self.resume_state(key, ResumePoint::JobStart { previous: meta });
        state.job_index = index;
        store.commit_resume_point(&dir, &state)
    }

    fn resume_state(&self, key: JobKey, point: ResumePoint) -> ResumeState {
        ResumeState {
            job_index: self.job_index,
            key,
            run_step: self.run_step,
            temperature: self.knobs.temperature,
            alpha: self.knobs.alpha,
            point,
        }
    }

    fn load_previous(
        &self,
        dir: &Path,
        meta: &PreviousMeta,
    ) -> Result<GenerationOutcome<B::InnerBackend>> {
        let device = self.device.clone();
        Ok(GenerationOutcome {
            final_net: Teacher {
                net: self.load_net(&dir.join(files::PREV_FINAL), &device)?,
                val_acc: meta.final_acc,
            },
            best_net: Teacher {
                net: self.load_net(&dir.join(files::PREV_BEST), &device)?,
                val_acc: meta.best_acc,
            },
            teacher: match meta.teacher_acc {
                Some(val_acc) => Some(Teacher {
                    net: self.load_net(&dir.join(files::PREV_TEACHER), &device)?,
                    val_acc,
                }),
                None => None,
            },
        })
    }

    fn make_batch(
        &mut self,
        indices: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
        let set = &self.data.loaded.train;
        let augment = self.data.augment.as_ref().map(|a| (a, rng));
        data::fill_batch(
            set,
            indices,
            &self.data.norm,
            augment,
            &mut self.batch,
            &mut self.labels,
        );
        let (n, c, h, w) = (indices.len(), set.channels, set.height, set.width);
        let x = Tensor::from_data(
            TensorData::new(std::mem::take(&mut self.batch), [n, c, h, w]),
            &self.device,
        );
        let y = Tensor::from_data(
            TensorData::new(std::mem::take(&mut self.labels), [n]),
            &self.device,
        );
        (x, y)
    }

    /// Validation and test loss/accuracy of `student` in inference mode; updates the
    /// best snapshot and, for self-distillation, replaces the teacher on improvement.
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &mut self,
        key: JobKey,
        student: &Net<B>,
        step: u64,
        epoch: f64,
        lr: f64,
        started: Instant,
        decide: Decide,
        teacher: &mut Option<Teacher<B::InnerBackend>>,
        state: &mut GenState<B::InnerBackend>,
    ) -> Result<()> {
        self.flush_pending_step(false)?;
        let model = student.valid();
        let (val_loss, val_acc) = self.eval_split(&model, EvalSet::Val);
        let (test_loss, test_acc) = self.eval_split(&model, EvalSet::Test);
        let seen = state.train_seen.max(1) as f64;
        let deciding = decide != Decide::ReportOnly;
        let improved = deciding && state.best.as_ref().is_none_or(|b| val_acc > b.val_acc);
        if improved {
            state.best = Some(BestSnapshot {
                net: model.clone(),
                val_acc,
                step,
                test_acc,
            });
        }
        self.emit(TrainEvent::Eval(EvalMetrics {
            key,
            step,
            epoch,
            train_loss: state.train_loss_sum / seen,
            train_acc: state.train_correct as f64 / seen,
            val_loss,
            val_acc,
            test_loss,
            test_acc,
            best_val_acc: state.best.as_ref().map_or(val_acc, |b| b.val_acc),
            lr,
            temperature: self.knobs.temperature,
            alpha: self.knobs.alpha,
            elapsed_s: started.elapsed().as_secs_f64(),
        }))?;
        state.train_loss_sum = 0.0;
        state.train_correct = 0;
        state.train_seen = 0;
        state.last_eval_step = Some(step);
        state.last_val_acc = val_acc;
        state.last_test_acc = test_acc;
        // Self-distillation: the best network so far (including an inherited teacher)
        // teaches; a strictly better student replaces it.
        let teacher_acc = teacher.as_ref().map(|t| t.val_acc);
        if decide == Decide::SelfDistill && teacher_acc.is_none_or(|a| val_acc > a) {
            *teacher = Some(Teacher {
                net: model,
                val_acc,
            });
            state.replacements += 1;
            self.emit(TrainEvent::TeacherReplaced {
                key,
                step,
                epoch,
                old_acc: teacher_acc,
                new_acc: val_acc,
            })?;
        }
        Ok(())
    }

    fn eval_split(&mut self, model: &Net<B::InnerBackend>, which: EvalSet) -> (f64, f64) {
        const EVAL_BATCH: usize = 500;
        let data = self.data;
        let (set, indices) = match which {
            EvalSet::Val => (&data.loaded.train, &data.split.val),
            EvalSet::Test => (&data.loaded.test, &data.test),
        };
        let device = self.device.clone();
        // Every batch's loss and hits stay on the device until the split is done: one
        // sync per evaluation, so a GPU runs the batches back to back.
        let mut reads = Readback::<B::InnerBackend, usize>::new(usize::MAX);
        for chunk in indices.chunks(EVAL_BATCH) {
            let _warm = B::InnerBackend::keep_pool_warm();
            data::fill_batch(
                set,
                chunk,
                &data.norm,
                None,
                &mut self.batch,
                &mut self.labels,
            );
            let n = chunk.len();
            let x = Tensor::<B::InnerBackend, 4>::from_data(
                TensorData::new(
                    std::mem::take(&mut self.batch),
                    [n, set.channels, set.height, set.width],
                ),
                &device,
            );
            let y = Tensor::<B::InnerBackend, 1, Int>::from_data(
                TensorData::new(std::mem::take(&mut self.labels), [n]),
                &device,
            );
            let logits = model.forward(x);
            let loss = cross_entropy(logits.clone(), y.clone());
            let none_yet = reads.push(loss, correct_count(logits, y), n);
            debug_assert!(none_yet.is_empty());
        }
        let (mut loss_sum, mut correct) = (0.0, 0u64);
        for batch in reads.drain() {
            loss_sum += batch.loss * batch.meta as f64;
            correct += batch.correct;
        }
        let n = indices.len().max(1) as f64;
        (loss_sum / n, correct as f64 / n)
    }

    /// Applies queued controls before step `next_step`; blocks while paused.
    fn poll_controls(&mut self, key: JobKey, next_step: u64) -> Result<Flow> {
        loop {
            let control = if self.knobs.paused {
                match self.controls.recv() {
                    Ok(c) => c,
                    // The controlling UI is gone: nobody can resume us, so go on.
                    Err(_) => Control::Resume,
                }
            } else {
                match self.controls.try_recv() {
                    Ok(c) => c,
                    Err(_) => return Ok(Flow::Continue),
                }
            };
            let applied = match control {
                Control::Pause if !self.knobs.paused => {
                    self.knobs.paused = true;
                    true
                }
                Control::Resume if self.knobs.paused => {
                    self.knobs.paused = false;
                    true
                }
                Control::Pause | Control::Resume => false,
                Control::SetTemperature(t) => {
                    let ok =
                        t.is_finite() && t >= limits::TEMPERATURE.0 && t <= limits::TEMPERATURE.1;
                    if ok {
                        self.knobs.temperature = t;
                    }
                    ok
                }
                Control::SetAlpha(a) => {
                    let ok = a.is_finite() && a >= limits::ALPHA.0 && a <= limits::ALPHA.1;
                    if ok {
                        self.knobs.alpha = a;
                    }
                    ok
                }
                Control::Stop => true,
            };
            if applied {
                self.flush_pending_step(false)?;
                self.emit(TrainEvent::ControlApplied {
                    key,
                    step: next_step,
                    control,
                })?;
            } else {
                self.emit(TrainEvent::Log {
                    message: format!("control {control} ignored (out of range or no effect)"),
                })?;
            }
            if control == Control::Stop {
                return Ok(Flow::Stop);
            }
        }
    }

    /// Accounts and reports steps read back from the device, in order; the first with a
    /// non-finite loss ends the job as diverged (`Some`).
    fn report_steps(
        &mut self,
        key: JobKey,
        read: Vec<StepRead<StepMeta>>,
        state: &mut GenState<B::InnerBackend>,
    ) -> Result<Option<JobResult<B::InnerBackend>>> {
        for StepRead {
            meta,
            mut loss,
            correct,
        } in read
        {
            if self.faults.nan_at_step == Some(meta.run_step) {
                loss = f64::NAN;
            }
            if !loss.is_finite() {
                self.flush_pending_step(true)?;
                self.emit(TrainEvent::Diverged {
                    key,
                    step: meta.step,
                    loss,
                })?;
                return Ok(Some(JobResult::Diverged));
            }
            state.train_loss_sum += loss * meta.images as f64;
            state.train_correct += correct;
            state.train_seen += meta.images as u64;
            self.emit_step(StepMetrics {
                key,
                step: meta.step,
                run_step: meta.run_step,
                epoch: meta.epoch,
                loss,
                lr: meta.lr,
                temperature: meta.temperature,
                alpha: meta.alpha,
                has_teacher: meta.has_teacher,
                coalesced: 1,
                ticket: Ticket::default(),
            })?;
        }
        Ok(None)
    }

    /// Records every step; offers it to the consumer, folding it into the pending one
    /// while the consumer lags.
    fn emit_step(&mut self, m: StepMetrics) -> Result<()> {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        sink.record_only(&TrainEvent::Step(m.clone()))?;
        let m = match self.pending_step.take() {
            Some(p) => merge_steps(p, m),
            None => m,
        };
        if let Err(back) = sink.tx.offer_step(m) {
            self.pending_step = Some(back);
        }
        Ok(())
    }

    /// Before an essential event, try to deliver the folded step; at a generation end
    /// an undeliverable one is dropped (steps may be dropped, never merged across jobs).
    fn flush_pending_step(&mut self, end_of_job: bool) -> Result<()> {
        if let Some(p) = self.pending_step.take() {
            let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(back) = sink.tx.offer_step(p) {
                if !end_of_job {
                    self.pending_step = Some(back);
                }
            }
        }
        Ok(())
    }
}

fn merge_steps(older: StepMetrics, newer: StepMetrics) -> StepMetrics {
    let n = older.coalesced + newer.coalesced;
    StepMetrics {
        loss: (older.loss * older.coalesced as f64 + newer.loss * newer.coalesced as f64)
            / n as f64,
        coalesced: n,
        ..newer
    }
}

/// What a step's report needs besides its loss and hit count, kept while those wait on
/// the device ([`Readback`]).
struct StepMeta {
    step: u64,
    run_step: u64,
    /// 1-based.
    epoch: usize,
    lr: f64,
    temperature: f64,
    alpha: f64,
    has_teacher: bool,
    images: usize,
}

/// What an evaluation may change besides reporting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Decide {
    /// Update the best snapshot.
    BestOnly,
    /// Update the best snapshot and replace the teacher on improvement.
    SelfDistill,
    /// Report numbers only.
    ReportOnly,
}

#[derive(Clone, Copy)]
enum EvalSet {
    Val,
    Test,
}

struct BestSnapshot<B: KernelBackend> {
    net: Net<B>,
    val_acc: f64,
    step: u64,
    test_acc: f64,
}

/// Per-generation bookkeeping between evaluations.
struct GenState<B: KernelBackend> {
    train_loss_sum: f64,
    train_correct: u64,
    train_seen: u64,
    best: Option<BestSnapshot<B>>,
    replacements: usize,
    last_eval_step: Option<u64>,
    last_val_acc: f64,
    last_test_acc: f64,
}

impl<B: KernelBackend> GenState<B> {
    fn new() -> Self {
        GenState {
            train_loss_sum: 0.0,
            train_correct: 0,
            train_seen: 0,
            best: None,
            replacements: 0,
            last_eval_step: None,
            last_val_acc: 0.0,
            last_test_acc: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_separates_streams() {
        assert_ne!(mix(&[1, 1, PURPOSE_INIT]), mix(&[1, 1, PURPOSE_ORDER]));
        assert_ne!(mix(&[1, 2]), mix(&[2, 1]));
        assert_eq!(mix(&[5, 6, 7]), mix(&[5, 6, 7]));
    }
}
