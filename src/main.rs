//! Command line: one function per subcommand. The dashboard lives in this binary (not
//! the library) so that UI edits never recompile the training code.

mod tui;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use selfdistill::data::{self, DataOptions, DatasetKind};
use selfdistill::preset::{self, PresetOrigin};
use selfdistill::report;
use selfdistill::store;
use selfdistill::train::backend::BackendKind;
use selfdistill::train::events::{Control, RunStatus};
use selfdistill::train::{prepare, prepare_resume, PreparedRun, RunOptions};

#[derive(Parser)]
#[command(
    name = "selfdistill",
    version,
    about = "Self-distillation vs Born-Again distillation, live in the terminal"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    ui: UiArgs,
}

/// Dashboard settings, accepted before or after the subcommand.
#[derive(clap::Args)]
struct UiArgs {
    /// Minimum milliseconds between dashboard redraws (default: 10 frames/s).
    #[arg(long, global = true, default_value_t = 100, value_parser = clap::value_parser!(u64).range(16..=5000))]
    refresh_ms: u64,
    /// How curves are drawn: braille (finest), dot or block (terminals without braille fonts).
    #[arg(long, global = true, value_enum, default_value_t = MarkerArg::Braille)]
    marker: MarkerArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum MarkerArg {
    Braille,
    Dot,
    Block,
}

impl UiArgs {
    fn options(&self, run: RunOptions) -> tui::UiOptions {
        let marker = match self.marker {
            MarkerArg::Braille => tui::theme::LineMarker::Braille,
            MarkerArg::Dot => tui::theme::LineMarker::Dot,
            MarkerArg::Block => tui::theme::LineMarker::Block,
        };
        tui::UiOptions {
            refresh: std::time::Duration::from_millis(self.refresh_ms),
            marker,
            run,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train a preset (dashboard on a terminal, or --headless).
    Run(RunArgs),
    /// List shipped and user presets.
    Presets,
    /// List past runs in the runs directory.
    Runs {
        #[arg(long)]
        runs_dir: Option<PathBuf>,
    },
    /// Dataset tools.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Export a run as CSV, JSON, or SVG/PNG charts.
    Export(ExportArgs),
    /// Continue a stopped, failed or killed run from its last checkpoint.
    Resume(ResumeArgs),
    /// Attach the dashboard to a run another process is writing (or wrote): follow its
    /// event log live and steer it through its control file. Quitting detaches.
    Watch(WatchArgs),
    /// Training and inference throughput of the small CNN and ResNet-20 (table + JSON;
    /// bench/compare.sh runs it against PyTorch).
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// CPU compute threads (the rayon pool flex runs on); default: all cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "64,128")]
    batch: String,
    /// Networks, comma-separated: cnn, resnet20.
    #[arg(long, default_value = "cnn,resnet20")]
    models: String,
    /// Cases, comma-separated: train, train-kd, infer.
    #[arg(long, default_value = "train,train-kd,infer")]
    cases: String,
    /// Least timed steps per repetition (each also runs at least --min-time).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Least seconds per repetition (0: exactly --steps steps).
    #[arg(long, value_name = "SECS", default_value_t = selfdistill::bench::DEFAULT_MIN_REP_S)]
    min_time: f64,
    /// Untimed steps before timing each case.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Repetitions per case (the table shows the median).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seed of the weights and synthetic inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training steps per read of loss and hit count (each read is a host/device sync).
    /// Default: the trainer's, 1 on the CPU and 8 on a GPU.
    #[arg(long, value_name = "N")]
    read_every: Option<usize>,
    /// Also write the results as JSON here (same schema as bench/pytorch_bench.py).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ResumeArgs {
    /// Run folder, or a run id in the runs directory (see `selfdistill runs`).
    run: String,
    /// Print progress lines instead of opening the dashboard.
    #[arg(long)]
    headless: bool,
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
    /// Folder with the dataset files (overrides the run's data.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where run ids are looked up (default: $SELFDISTILL_RUNS_DIR or the user data dir).
    #[arg(long)]
    runs_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct WatchArgs {
    /// Run folder, or a run id in the runs directory (see `selfdistill runs`).
    run: String,
    /// Where run ids are looked up (default: $SELFDISTILL_RUNS_DIR or the user data dir).
    #[arg(long)]
    runs_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Run folder, or a run id (or unique prefix, or `latest`) in the runs directory.
    run: String,
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// csv/json: the output file (csv also writes <stem>-generations.csv beside it);
    /// svg/png: a folder for accuracy, loss and generations charts.
    /// Default: <run id>.csv, <run id>.json or <run id>-charts/ here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where run ids are looked up (default: $SELFDISTILL_RUNS_DIR or the user data dir).
    #[arg(long)]
    runs_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Csv,
    Json,
    Svg,
    Png,
}

impl From<ExportFormat> for report::Format {
    fn from(f: ExportFormat) -> Self {
        match f {
            ExportFormat::Csv => report::Format::Csv,
            ExportFormat::Json => report::Format::Json,
            ExportFormat::Svg => report::Format::Svg,
            ExportFormat::Png => report::Format::Png,
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Preset name (see `selfdistill presets`) or path to a TOML file.
    #[arg(long, default_value = preset::DEFAULT_PRESET)]
    preset: String,
    /// Print progress lines instead of opening the dashboard.
    #[arg(long)]
    headless: bool,
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
    /// Run this one seed instead of the preset's seeds.
    #[arg(long)]
    seed: Option<u64>,
    /// Folder with the dataset files (overrides the preset's data.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where run folders are written (default: $SELFDISTILL_RUNS_DIR or the user data dir).
    #[arg(long)]
    runs_dir: Option<PathBuf>,
    /// Training steps per read of loss and accuracy from the device (each read is a
    /// sync). Default: 1 on the CPU, 8 on a GPU. The numbers do not depend on it.
    #[arg(long, value_name = "N")]
    read_every: Option<usize>,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Split sizes and per-class counts of train / validation / test.
    Inspect {
        /// synthetic, digits, mnist, fashion-mnist, cifar10, cifar100
        dataset: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Validation fraction carved from the training set.
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        #[arg(long, default_value_t = 0)]
        split_seed: u64,
    },
    /// Download mnist, fashion-mnist, cifar10 or cifar100 from the official sources,
    /// verified by checksum (resumes interrupted downloads).
    Download {
        /// mnist, fashion-mnist, cifar10, cifar100
        dataset: String,
        /// Files go to <DATA_DIR>/<dataset> (default: the user folder the loaders search).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Cpu,
    Cuda,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Cpu => BackendKind::Cpu,
            BackendArg::Cuda => BackendKind::Cuda,
        }
    }
}

fn main() -> ExitCode {
    let _ = selfdistill::alloc::tune_for_training();
    let cli = Cli::parse();
    let result = match cli.command {
        None => no_command(&cli.ui),
        Some(Command::Run(args)) => run(args, &cli.ui),
        Some(Command::Presets) => list_presets(),
        Some(Command::Runs { runs_dir }) => list_runs(runs_dir),
        Some(Command::Data {
            command:
                DataCommand::Inspect {
                    dataset,
                    data_dir,
                    val_fraction,
                    split_seed,
                },
        }) => inspect(&dataset, data_dir, val_fraction, split_seed),
        Some(Command::Data {
            command: DataCommand::Download { dataset, data_dir },
        }) => download(&dataset, data_dir),
        Some(Command::Export(args)) => export(args),
        Some(Command::Resume(args)) => resume(args, &cli.ui),
        Some(Command::Watch(args)) => watch(args, &cli.ui),
        Some(Command::Bench(args)) => bench(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn no_command(ui: &UiArgs) -> Result<ExitCode> {
    if !std::io::stdout().is_terminal() {
        eprintln!(
            "selfdistill: stdout is not a terminal, so the dashboard cannot open.\n\
             Use `selfdistill run --preset {} --headless` for scripts, or `selfdistill --help`.",
            preset::DEFAULT_PRESET
        );
        return Ok(ExitCode::from(2));
    }
    tui::open_menu(ui.options(RunOptions {
        record: true,
        ..Default::default()
    }))
}

fn run(args: RunArgs, ui: &UiArgs) -> Result<ExitCode> {
    let preset = preset::resolve(&args.preset)?;
    let opts = RunOptions {
        backend: args.backend.map(Into::into),
        seed: args.seed,
        data_dir: args.data_dir,
        runs_dir: args.runs_dir,
        record: true,
        read_every: args.read_every,
    };
    if !args.headless {
        if !std::io::stdout().is_terminal() {
            eprintln!(
                "selfdistill: stdout is not a terminal; add --headless to print progress lines instead of the dashboard."
            );
            return Ok(ExitCode::from(2));
        }
        // Input errors (bad data dir, no GPU, unwritable runs dir) print plainly, before
        // the dashboard takes the screen.
        let prepared = prepare(preset, &opts)?;
        return tui::open_run(ui.options(opts), prepared);
    }
    run_headless(prepare(preset, &opts)?)
}

fn resume(args: ResumeArgs, ui: &UiArgs) -> Result<ExitCode> {
    let runs_dir = args.runs_dir.unwrap_or_else(store::default_runs_dir);
    let dir = store::find_run(&runs_dir, &args.run)?;
    let opts = RunOptions {
        backend: args.backend.map(Into::into),
        seed: None,
        data_dir: args.data_dir,
        runs_dir: Some(runs_dir),
        record: true,
        read_every: None,
    };
    if !args.headless && !std::io::stdout().is_terminal() {
        eprintln!("selfdistill: stdout is not a terminal; add --headless to print progress lines instead of the dashboard.");
        return Ok(ExitCode::from(2));
    }
    let prepared = prepare_resume(&dir, &opts)?;
    if args.headless {
        run_headless(prepared)
    } else {
        tui::open_run(ui.options(opts), prepared)
    }
}

fn watch(args: WatchArgs, ui: &UiArgs) -> Result<ExitCode> {
    let runs_dir = args.runs_dir.unwrap_or_else(store::default_runs_dir);
    let dir = store::find_run(&runs_dir, &args.run)?;
    if !std::io::stdout().is_terminal() {
        eprintln!(
            "selfdistill: stdout is not a terminal, so the dashboard cannot open.\n\
             Use `selfdistill runs` for the status of runs, or `selfdistill export {} --format csv|json` for their numbers.",
            args.run
        );
        return Ok(ExitCode::from(2));
    }
    let opts = RunOptions {
        runs_dir: Some(runs_dir),
        record: true,
        ..Default::default()
    };
    tui::open_watch(ui.options(opts), dir)
}

/// Trains with progress lines on stdout; the first Ctrl-C stops gracefully.
fn run_headless(prepared: PreparedRun) -> Result<ExitCode> {
    let past = prepared
        .writer
        .as_ref()
        .map(|w| w.summary().clone())
        .unwrap_or_default();
    let handle = prepared.spawn();
    // First Ctrl-C stops gracefully (checkpoints and summary written), a second one exits.
    let controls = handle.controls.clone();
    let mut pressed = false;
    let _ = ctrlc::set_handler(move || {
        if pressed {
            std::process::exit(130);
        }
        pressed = true;
        eprintln!("\nstopping after the current step (Ctrl-C again to exit now)...");
        let _ = controls.send(Control::Stop);
    });
    let stdout = std::io::stdout();
    let status = selfdistill::headless::print_run_after(&handle.events, &mut stdout.lock(), past)?;
    let _ = handle.thread.join();
    Ok(match status {
        RunStatus::Finished | RunStatus::Stopped => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

fn list_presets() -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    for entry in preset::list_all() {
        let origin = match &entry.origin {
            PresetOrigin::Shipped => "shipped".to_string(),
            PresetOrigin::User(p) | PresetOrigin::File(p) => p.display().to_string(),
        };
        match &entry.preset {
            Ok(p) => writeln!(
                out,
                "{:<20} {}\n{:<20} {} [{}]",
                p.name,
                p.description,
                "",
                p.summary_line(),
                origin
            )?,
            Err(e) => writeln!(out, "{:<20} INVALID: {e}", entry.name)?,
        }
    }
    if let Some(dir) = preset::user_preset_dir() {
        writeln!(out, "\nuser presets: {}/*.toml", dir.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn list_runs(runs_dir: Option<PathBuf>) -> Result<ExitCode> {
    let dir = runs_dir.unwrap_or_else(store::default_runs_dir);
    let runs = store::list_runs(&dir);
    let mut out = std::io::stdout().lock();
    if runs.is_empty() {
        writeln!(out, "no runs in {}", dir.display())?;
    }
    for r in runs {
        let s = &r.summary;
        let status = s
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        let mut best: std::collections::BTreeMap<_, f64> = Default::default();
        for g in &s.generations {
            let b = best.entry(g.key.method).or_insert(0.0);
            *b = b.max(g.best_val_acc);
        }
        let best: Vec<String> = best
            .iter()
            .map(|(m, a)| format!("{m} {:.2}%", 100.0 * a))
            .collect();
        let preset = s.plan.as_ref().map(|p| p.preset.as_str()).unwrap_or("?");
        writeln!(
            out,
            "{:<40} {:<18} {:<9} {}",
            r.id,
            preset,
            status,
            best.join("  ")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(
    dataset: &str,
    data_dir: Option<PathBuf>,
    val_fraction: f64,
    split_seed: u64,
) -> Result<ExitCode> {
    let kind = DatasetKind::parse(dataset).with_context(|| {
        let names: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
        format!(
            "unknown dataset {dataset:?}; choose one of {}",
            names.join(", ")
        )
    })?;
    if !(0.0..1.0).contains(&val_fraction) {
        anyhow::bail!("--val-fraction must be in [0, 1)");
    }
    let loaded = data::load(
        kind,
        &DataOptions {
            data_dir,
            ..Default::default()
        },
    )?;
    let split = data::stratified_split(
        &loaded.train.labels,
        loaded.train.num_classes,
        val_fraction,
        split_seed,
    );
    let mut out = std::io::stdout().lock();
    let t = &loaded.train;
    writeln!(out, "{} from {}", kind.name(), loaded.source)?;
    writeln!(
        out,
        "images {}x{}x{}, {} classes",
        t.channels, t.height, t.width, t.num_classes
    )?;
    writeln!(
        out,
        "train {} · validation {} (fraction {val_fraction}, split seed {split_seed}) · test {}",
        split.train.len(),
        split.val.len(),
        loaded.test.len()
    )?;
    let train = t.class_counts(Some(&split.train));
    let val = t.class_counts(Some(&split.val));
    let test = loaded.test.class_counts(None);
    writeln!(
        out,
        "{:>4} {:<16} {:>8} {:>8} {:>8}",
        "#", "class", "train", "val", "test"
    )?;
    for c in 0..t.num_classes {
        let name = loaded.class_names.get(c).map(String::as_str).unwrap_or("");
        writeln!(
            out,
            "{c:>4} {name:<16} {:>8} {:>8} {:>8}",
            train[c], val[c], test[c]
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn download(dataset: &str, data_dir: Option<PathBuf>) -> Result<ExitCode> {
    use selfdistill::data::download::{self, BarProgress, FileStatus, Source};
    let kind = DatasetKind::parse(dataset).with_context(|| {
        let names: Vec<&str> = DatasetKind::ALL
            .iter()
            .filter(|k| k.needs_files())
            .map(|k| k.name())
            .collect();
        format!(
            "unknown dataset {dataset:?}; choose one of {}",
            names.join(", ")
        )
    })?;
    let source = Source::official(kind)
        .with_context(|| format!("{kind} is built in; there is nothing to download"))?;
    let dir = match data_dir {
        Some(d) => d.join(kind.name()),
        None => download::default_target_dir(kind).context(
            "no folder to download to: neither XDG_DATA_HOME nor HOME is set; pass --data-dir",
        )?,
    };
    eprintln!("{kind}: downloading into {}", dir.display());
    let report = download::download_dataset(&source, &dir, &BarProgress::new())?;
    let mut out = std::io::stdout().lock();
    for f in &report.files {
        let how = match f.status {
            FileStatus::Downloaded => "downloaded",
            FileStatus::AlreadyPresent => "already present",
        };
        writeln!(out, "{}  {} bytes  {how}", f.name, f.bytes)?;
        writeln!(out, "  md5    {}", f.md5)?;
        writeln!(out, "  sha256 {}", f.sha256)?;
    }
    writeln!(out, "checksums: {}", report.checksums_file.display())?;
    writeln!(
        out,
        "{kind} loads from {}: train {} · test {}",
        report.source, report.train_len, report.test_len
    )?;
    Ok(ExitCode::SUCCESS)
}

fn bench(args: BenchArgs) -> Result<ExitCode> {
    use selfdistill::bench::{self, BenchCase, BenchModel, BenchOptions};
    let batches = bench::parse_list(&args.batch, "batch size", |s| {
        s.parse::<usize>().ok().filter(|&b| b > 0)
    })?;
    let opts = BenchOptions {
        backend: args.backend.into(),
        threads: args.threads,
        batches,
        models: bench::parse_list(&args.models, "model", BenchModel::parse)?,
        cases: bench::parse_list(&args.cases, "case", BenchCase::parse)?,
        steps: args.steps,
        min_rep_s: args.min_time,
        warmup: args.warmup,
        reps: args.reps,
        seed: args.seed,
        read_every: args.read_every,
    };
    let report = bench::run(&opts, |r| eprintln!("{}", bench::result_line(r)))?;
    print!("{}", bench::table(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn export(args: ExportArgs) -> Result<ExitCode> {
    let runs_dir = args.runs_dir.unwrap_or_else(store::default_runs_dir);
    let dir = report::resolve_run(&args.run, &runs_dir)?;
    let run = report::RunData::load(&dir)?;
    let format = report::Format::from(args.format);
    let out = args
        .out
        .unwrap_or_else(|| report::default_out(&run, format));
    let written = report::export(&run, format, &out)?;
    let mut stdout = std::io::stdout().lock();
    for path in written {
        writeln!(stdout, "{}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
