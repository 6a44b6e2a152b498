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
use selfdistill::store;
use selfdistill::train::backend::BackendKind;
use selfdistill::train::events::{Control, RunStatus};
use selfdistill::train::{prepare, RunOptions};

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
    let prepared = prepare(preset, &opts)?;
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
    let status = selfdistill::headless::print_run(&handle.events, &mut stdout.lock())?;
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
