//! Presets: TOML files describing one experiment. Shipped presets are embedded in the
//! binary; user presets live in `<config dir>/presets/*.toml`.
//!
//! Every key is checked: unknown keys and out-of-range values are errors naming the
//! file, the key and the allowed range.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::DatasetKind;
use crate::model::Arch;
use crate::train::backend::BackendKind;
use crate::train::events::Method;
use crate::train::schedule::ScheduleKind;

/// Shipped presets: (name, TOML source).
pub const SHIPPED: &[(&str, &str)] = &[
    ("quick", include_str!("../presets/quick.toml")),
    ("digits", include_str!("../presets/digits.toml")),
    (
        "fashion-mnist",
        include_str!("../presets/fashion-mnist.toml"),
    ),
    (
        "cifar10-resnet20",
        include_str!("../presets/cifar10-resnet20.toml"),
    ),
    (
        "cifar100-resnet32",
        include_str!("../presets/cifar100-resnet32.toml"),
    ),
];

/// The preset used when none is named.
pub const DEFAULT_PRESET: &str = "quick";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Letters, digits, `-`, `_` and `.` only: it becomes part of a folder name.
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub backend: BackendKind,
    pub data: DataSection,
    pub model: ModelSection,
    pub train: TrainSection,
    #[serde(default)]
    pub distill: DistillSection,
    pub run: RunSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub dataset: DatasetKind,
    /// Folder holding the dataset files (mnist, fashion-mnist, cifar*).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Fraction of the training set held out for validation (teacher selection).
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Seed of the validation split; fixed so every seed and method shares it.
    #[serde(default)]
    pub split_seed: u64,
    /// Random crop + flip; default: on for CIFAR, off otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<bool>,
    /// Use only the first N training images (after the split), for quick runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    /// CIFAR-100 labels: "fine" (100 classes, default) or "coarse" (20).
    #[serde(default)]
    pub cifar100_labels: Cifar100Labels,
    /// Generator settings for the `synthetic` dataset.
    #[serde(default)]
    pub synthetic: SyntheticSection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cifar100Labels {
    #[default]
    Fine,
    Coarse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticSection {
    pub train_size: usize,
    pub test_size: usize,
    pub image_size: usize,
    pub seed: u64,
    pub label_noise: f64,
}

impl Default for SyntheticSection {
    fn default() -> Self {
        let d = crate::data::SyntheticConfig::default();
        SyntheticSection {
            train_size: d.train_size,
            test_size: d.test_size,
            image_size: d.image_size,
            seed: d.seed,
            label_noise: d.label_noise as f64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub arch: Arch,
    /// Hidden units (mlp) or first-stage channels (cnn, resnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
}

impl ModelSection {
    pub fn width(&self) -> usize {
        self.width.unwrap_or(self.arch.default_width())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Epochs per generation.
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// Epochs at which a multi-step schedule multiplies the lr by `gamma`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub milestones: Vec<usize>,
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// Evaluate every N optimiser steps; 0 = at the end of every epoch.
    #[serde(default)]
    pub eval_every: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeacherChoice {
    /// Generation k is taught by generation k-1's final network (Born-Again).
    #[default]
    Final,
    /// ... by generation k-1's best-validation snapshot.
    Best,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSection {
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Which network of generation k-1 teaches generation k (conventional method).
    #[serde(default)]
    pub teacher: TeacherChoice,
}

impl Default for DistillSection {
    fn default() -> Self {
        DistillSection {
            temperature: default_temperature(),
            alpha: default_alpha(),
            teacher: TeacherChoice::Final,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub methods: Vec<Method>,
    /// Generations for `conventional` and `self` (`baseline` always runs one).
    pub generations: usize,
    pub seeds: Vec<u64>,
}

fn default_val_fraction() -> f64 {
    0.1
}
fn default_momentum() -> f64 {
    0.9
}
fn default_weight_decay() -> f64 {
    5e-4
}
fn default_gamma() -> f64 {
    0.1
}
fn default_temperature() -> f64 {
    4.0
}
fn default_alpha() -> f64 {
    0.5
}

/// A preset that could not be used: where, which key, what is allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetError {
    pub source: String,
    pub message: String,
}

impl fmt::Display for PresetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "preset {}: {}", self.source, self.message)
    }
}

impl std::error::Error for PresetError {}

/// Limits of every numeric key, as (key, min, max); also shown in error messages.
pub mod limits {
    pub const EPOCHS: (usize, usize) = (1, 10_000);
    pub const BATCH: (usize, usize) = (1, 8192);
    pub const LR: (f64, f64) = (1e-6, 10.0);
    pub const MOMENTUM: (f64, f64) = (0.0, 0.999);
    pub const WEIGHT_DECAY: (f64, f64) = (0.0, 0.1);
    pub const GAMMA: (f64, f64) = (1e-4, 1.0);
    pub const VAL_FRACTION: (f64, f64) = (0.01, 0.5);
    pub const TEMPERATURE: (f64, f64) = (0.1, 100.0);
    pub const ALPHA: (f64, f64) = (0.0, 1.0);
    pub const GENERATIONS: (usize, usize) = (1, 50);
    pub const WIDTH: (usize, usize) = (1, 1024);
    pub const SEEDS: (usize, usize) = (1, 100);
    pub const SYN_TRAIN: (usize, usize) = (100, 1_000_000);
    pub const SYN_TEST: (usize, usize) = (10, 1_000_000);
    pub const SYN_SIZE: (usize, usize) = (12, 64);
    pub const LABEL_NOISE: (f64, f64) = (0.0, 0.5);
}

impl Preset {
    /// Parses and validates TOML; `source` names the file in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Preset, PresetError> {
        let preset: Preset = toml::from_str(text).map_err(|e| PresetError {
            source: source.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        preset.validate().map_err(|message| PresetError {
            source: source.to_string(),
            message,
        })?;
        Ok(preset)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a preset always serialises")
    }

    /// Checks every range; the message names the key and the allowed range.
    pub fn validate(&self) -> Result<(), String> {
        use limits::*;
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.name.starts_with('.')
        {
            return Err(format!(
                "key `name` = {:?} is not allowed: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'",
                self.name
            ));
        }
        let t = &self.train;
        range_u("train.epochs", t.epochs, EPOCHS)?;
        range_u("train.batch_size", t.batch_size, BATCH)?;
        range_f("train.lr", t.lr, LR)?;
        range_f("train.momentum", t.momentum, MOMENTUM)?;
        range_f("train.weight_decay", t.weight_decay, WEIGHT_DECAY)?;
        range_f("train.gamma", t.gamma, GAMMA)?;
        if t.nesterov && t.momentum == 0.0 {
            return Err("key `train.nesterov` = true needs `train.momentum` > 0".into());
        }
        for (i, m) in t.milestones.iter().enumerate() {
            if *m == 0 || *m >= t.epochs || (i > 0 && *m <= t.milestones[i - 1]) {
                return Err(format!(
                    "key `train.milestones` = {:?}: milestones must be strictly increasing epochs in 1..{}",
                    t.milestones, t.epochs
                ));
            }
        }
        if t.schedule == ScheduleKind::MultiStep && t.milestones.is_empty() {
            return Err(
                "key `train.milestones` is required when `train.schedule` = \"multi-step\"".into(),
            );
        }
        let d = &self.data;
        range_f("data.val_fraction", d.val_fraction, VAL_FRACTION)?;
        if let Some(n) = d.train_limit {
            range_u("data.train_limit", n, (10, usize::MAX))?;
        }
        let s = &d.synthetic;
        range_u("data.synthetic.train_size", s.train_size, SYN_TRAIN)?;
        range_u("data.synthetic.test_size", s.test_size, SYN_TEST)?;
        range_u("data.synthetic.image_size", s.image_size, SYN_SIZE)?;
        range_f("data.synthetic.label_noise", s.label_noise, LABEL_NOISE)?;
        if let Some(w) = self.model.width {
            range_u("model.width", w, WIDTH)?;
        }
        range_f("distill.temperature", self.distill.temperature, TEMPERATURE)?;
        range_f("distill.alpha", self.distill.alpha, ALPHA)?;
        let r = &self.run;
        range_u("run.generations", r.generations, GENERATIONS)?;
        range_u("run.seeds (count)", r.seeds.len(), SEEDS)?;
        if r.methods.is_empty() {
            return Err("key `run.methods` is empty: name at least one of \"baseline\", \"conventional\", \"self\"".into());
        }
        for (i, m) in r.methods.iter().enumerate() {
            if r.methods[..i].contains(m) {
                return Err(format!("key `run.methods` lists {m:?} twice"));
            }
        }
        for (i, s) in r.seeds.iter().enumerate() {
            if r.seeds[..i].contains(s) {
                return Err(format!("key `run.seeds` lists {s} twice"));
            }
        }
        Ok(())
    }

    /// Generations a method runs in this preset.
    pub fn generations_for(&self, method: Method) -> usize {
        match method {
            Method::Baseline => 1,
            _ => self.run.generations,
        }
    }

    /// Optimiser steps in one generation for a training set of `train_len` images.
    pub fn steps_per_epoch(&self, train_len: usize) -> u64 {
        train_len.div_ceil(self.train.batch_size) as u64
    }

    pub fn augment(&self) -> bool {
        self.data
            .augment
            .unwrap_or(self.data.dataset.default_augment())
    }

    /// One line for lists: dataset, model, methods.
    pub fn summary_line(&self) -> String {
        let methods: Vec<&str> = self.run.methods.iter().map(|m| m.name()).collect();
        format!(
            "{} · {} w{} · {} · {} gen x {} ep · T={} a={} · {}",
            self.data.dataset.name(),
            self.model.arch.name(),
            self.model.width(),
            methods.join("/"),
            self.run.generations,
            self.train.epochs,
            self.distill.temperature,
            self.distill.alpha,
            self.backend.name()
        )
    }
}

fn range_u(key: &str, v: usize, (lo, hi): (usize, usize)) -> Result<(), String> {
    if v < lo || v > hi {
        let hi = if hi == usize::MAX {
            String::new()
        } else {
            hi.to_string()
        };
        return Err(format!(
            "key `{key}` = {v} is out of range; allowed {lo}..={hi}"
        ));
    }
    Ok(())
}

fn range_f(key: &str, v: f64, (lo, hi): (f64, f64)) -> Result<(), String> {
    if !v.is_finite() || v < lo || v > hi {
        return Err(format!(
            "key `{key}` = {v} is out of range; allowed {lo}..={hi}"
        ));
    }
    Ok(())
}

/// Where a preset came from.
#[derive(Debug, Clone, PartialEq)]
pub enum PresetOrigin {
    Shipped,
    User(PathBuf),
    File(PathBuf),
}

/// A preset found on this machine (for menus and `selfdistill presets`).
#[derive(Debug, Clone)]
pub struct PresetEntry {
    pub name: String,
    pub origin: PresetOrigin,
    pub preset: Result<Preset, PresetError>,
}

/// `<config dir>/presets`, overridable with `SELFDISTILL_CONFIG_DIR`.
pub fn user_preset_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SELFDISTILL_CONFIG_DIR") {
        return Some(PathBuf::from(dir).join("presets"));
    }
    directories::ProjectDirs::from("", "", "selfdistill").map(|d| d.config_dir().join("presets"))
}

pub fn shipped(name: &str) -> Option<Preset> {
    SHIPPED.iter().find(|(n, _)| *n == name).map(|(n, text)| {
        Preset::from_toml(text, &format!("{n} (shipped)"))
            .expect("shipped presets are valid (tested)")
    })
}

/// Shipped presets first, then the user's (a broken user preset is listed with its error).
pub fn list_all() -> Vec<PresetEntry> {
    let mut out: Vec<PresetEntry> = SHIPPED
        .iter()
        .map(|(n, text)| PresetEntry {
            name: n.to_string(),
            origin: PresetOrigin::Shipped,
            preset: Preset::from_toml(text, &format!("{n} (shipped)")),
        })
        .collect();
    if let Some(dir) = user_preset_dir() {
        out.extend(list_dir(&dir));
    }
    out
}

fn list_dir(dir: &Path) -> Vec<PresetEntry> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = read
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| PresetEntry {
            name: p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            preset: load_file(&p),
            origin: PresetOrigin::User(p),
        })
        .collect()
}

pub fn load_file(path: &Path) -> Result<Preset, PresetError> {
    let text = std::fs::read_to_string(path).map_err(|e| PresetError {
        source: path.display().to_string(),
        message: format!("cannot read the file: {e}"),
    })?;
    Preset::from_toml(&text, &path.display().to_string())
}

/// Resolves `--preset NAME|PATH`: an existing file path, else a user preset, else a
/// shipped one.
pub fn resolve(name_or_path: &str) -> Result<Preset, PresetError> {
    let path = Path::new(name_or_path);
    let looks_like_path = name_or_path.contains('/') || name_or_path.ends_with(".toml");
    if looks_like_path || path.is_file() {
        return load_file(path);
    }
    if let Some(dir) = user_preset_dir() {
        let p = dir.join(format!("{name_or_path}.toml"));
        if p.is_file() {
            return load_file(&p);
        }
    }
    shipped(name_or_path).ok_or_else(|| PresetError {
        source: name_or_path.to_string(),
        message: format!(
            "no such preset; shipped presets: {}{}",
            SHIPPED
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            user_preset_dir()
                .map(|d| format!("; user presets are read from {}", d.display()))
                .unwrap_or_default()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick_text() -> &'static str {
        SHIPPED[0].1
    }

    #[test]
    fn shipped_presets_parse_and_round_trip() {
        for (name, text) in SHIPPED {
            let p = Preset::from_toml(text, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&p.name, name);
            let again = Preset::from_toml(&p.to_toml(), name).unwrap();
            assert_eq!(p, again, "{name} does not round-trip");
        }
    }

    #[test]
    fn unknown_key_is_an_error_naming_file_and_key() {
        let text = quick_text().replace("[train]", "[train]\nepoch = 3");
        let e = Preset::from_toml(&text, "my.toml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("preset my.toml:"), "{msg}");
        assert!(msg.contains("epoch"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn out_of_range_values_name_key_and_range() {
        let cases = [
            (
                "temperature = ",
                "temperature = 0.0 #",
                "distill.temperature",
                "0.1..=100",
            ),
            ("alpha = ", "alpha = 1.5 #", "distill.alpha", "0..=1"),
            ("epochs = ", "epochs = 0 #", "train.epochs", "1..=10000"),
            (
                "generations = ",
                "generations = 99 #",
                "run.generations",
                "1..=50",
            ),
        ];
        for (find, replace, key, range) in cases {
            assert!(quick_text().contains(find), "quick.toml lacks {find}");
            let text = quick_text().replacen(find, replace, 1);
            let msg = Preset::from_toml(&text, "q.toml").unwrap_err().to_string();
            assert!(
                msg.contains(key) && msg.contains(range) && msg.contains("q.toml"),
                "{msg}"
            );
        }
    }

    #[test]
    fn wrong_types_and_bad_enums_are_errors() {
        let text = quick_text().replacen("arch = \"cnn\"", "arch = \"transformer\"", 1);
        let msg = Preset::from_toml(&text, "q.toml").unwrap_err().to_string();
        assert!(msg.contains("transformer") && msg.contains("cnn"), "{msg}");
        let text = quick_text().replacen("[run]", "[run]\n", 1).replacen(
            "seeds = [",
            "seeds = \"x\" #[",
            1,
        );
        assert!(Preset::from_toml(&text, "q.toml").is_err());
    }

    #[test]
    fn names_that_could_escape_the_runs_folder_are_rejected() {
        for bad in ["../evil", "a/b", ".hidden", ""] {
            let text = quick_text().replacen("name = \"quick\"", &format!("name = {bad:?}"), 1);
            let msg = Preset::from_toml(&text, "q.toml").unwrap_err().to_string();
            assert!(msg.contains("`name`"), "{bad}: {msg}");
        }
    }

    #[test]
    fn resolve_finds_shipped_and_files_and_explains_unknown_names() {
        assert_eq!(resolve("quick").unwrap().name, "quick");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(
            &path,
            quick_text().replace("name = \"quick\"", "name = \"mine\""),
        )
        .unwrap();
        assert_eq!(resolve(path.to_str().unwrap()).unwrap().name, "mine");
        let msg = resolve("nope").unwrap_err().to_string();
        assert!(
            msg.contains("no such preset") && msg.contains("quick"),
            "{msg}"
        );
        let missing = dir.path().join("missing.toml");
        let msg = resolve(missing.to_str().unwrap()).unwrap_err().to_string();
        assert!(
            msg.contains("missing.toml") && msg.contains("cannot read"),
            "{msg}"
        );
    }
}
