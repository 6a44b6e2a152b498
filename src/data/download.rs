//! `selfdistill data download`: fetches a dataset from its official sources into the
//! folder the loaders search, verified against the published MD5 checksums.
//!
//! Every file goes through `<name>.part`: an interrupted transfer is resumed with an
//! HTTP `Range` request when the server answers `206 Partial Content` (otherwise it
//! restarts), the checksum is verified, and only then is the file renamed into place, so
//! nothing half-written ever carries a final name. A file already present with the right
//! checksum is not fetched again. Mirrors are tried in order; when all fail, the error
//! names the files to place by hand and the folder. Archives (CIFAR) are extracted through
//! a temporary folder, then moved into place. A `CHECKSUMS` file (BSD-tagged MD5 and
//! SHA-256 lines, checkable with `cksum -c CHECKSUMS`) records what was verified.
//!
//! The sources are plain data ([`Source`]), so tests point them at a local server.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use sha2::Digest as _;

use super::{DataError, DataOptions, DatasetKind};

/// Name of the file recording the checksums of what was downloaded.
pub const CHECKSUMS_FILE: &str = "CHECKSUMS";
/// Suffix of partially downloaded files.
pub const PART_SUFFIX: &str = ".part";

/// One file to fetch: its name on every mirror (and on disk), its published MD5 and,
/// when known, its size in bytes (for the progress bar and to discard oversized parts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: String,
    pub md5: String,
    pub size: Option<u64>,
}

impl RemoteFile {
    pub fn new(name: &str, md5: &str, size: Option<u64>) -> RemoteFile {
        RemoteFile {
            name: name.to_string(),
            md5: md5.to_ascii_lowercase(),
            size,
        }
    }
}

/// What to do with a downloaded file once verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    /// A gzipped tar archive, extracted into the download folder (the archive is kept so
    /// that a later run can verify it instead of downloading it again).
    TarGz,
}

/// Where a dataset comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub kind: DatasetKind,
    pub files: Vec<RemoteFile>,
    /// Base URLs tried in order; a file's URL is the base joined with its name.
    pub mirrors: Vec<String>,
    pub archive: Option<Archive>,
}

/// Bounds on network work, so that no loop runs forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// Longest wait for any single read from the server.
    pub read_timeout: Duration,
    /// Requests per file and mirror (the first plus resumptions after a dropped connection).
    pub attempts_per_mirror: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
            attempts_per_mirror: 4,
        }
    }
}

const MNIST_MIRRORS: [&str; 2] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
];
const FASHION_MIRRORS: [&str; 2] = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
];
const KRIZ: &str = "https://www.cs.toronto.edu/~kriz/";

impl Source {
    /// The official sources of a file-backed dataset; `None` for built-in ones.
    ///
    /// MD5s are the ones the sources publish (as used by torchvision); sizes are those of
    /// the official files.
    pub fn official(kind: DatasetKind) -> Option<Source> {
        let idx = |mirrors: &[&str], files: [(&str, &str, u64); 4]| Source {
            kind,
            files: files
                .iter()
                .map(|&(n, m, s)| RemoteFile::new(n, m, Some(s)))
                .collect(),
            mirrors: mirrors.iter().map(|m| m.to_string()).collect(),
            archive: None,
        };
        let tarball = |name: &str, md5: &str, size: u64| Source {
            kind,
            files: vec![RemoteFile::new(name, md5, Some(size))],
            mirrors: vec![KRIZ.to_string()],
            archive: Some(Archive::TarGz),
        };
        match kind {
            DatasetKind::Synthetic | DatasetKind::Digits => None,
            DatasetKind::Mnist => Some(idx(
                &MNIST_MIRRORS,
                [
                    (
                        "train-images-idx3-ubyte.gz",
                        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                        9_912_422,
                    ),
                    (
                        "train-labels-idx1-ubyte.gz",
                        "d53e105ee54ea40749a09fcbcd1e9432",
                        28_881,
                    ),
                    (
                        "t10k-images-idx3-ubyte.gz",
                        "9fb629c4189551a2d022fa330f9573f3",
                        1_648_877,
                    ),
                    (
                        "t10k-labels-idx1-ubyte.gz",
                        "ec29112dd5afa0611ce80d1b7f02629c",
                        4_542,
                    ),
                ],
            )),
            DatasetKind::FashionMnist => Some(idx(
                &FASHION_MIRRORS,
                [
                    (
                        "train-images-idx3-ubyte.gz",
                        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                        26_421_880,
                    ),
                    (
                        "train-labels-idx1-ubyte.gz",
                        "25c81989df183df01b3e8a0aad5dffbe",
                        29_515,
                    ),
                    (
                        "t10k-images-idx3-ubyte.gz",
                        "bef4ecab320f06d8554ea6380940ec79",
                        4_422_102,
                    ),
                    (
                        "t10k-labels-idx1-ubyte.gz",
                        "bb300cfdad3c16e7a12a480ee83cd310",
                        5_148,
                    ),
                ],
            )),
            DatasetKind::Cifar10 => Some(tarball(
                "cifar-10-binary.tar.gz",
                "c32a1d4ab5d03f1284b67883e8d87530",
                170_052_171,
            )),
            DatasetKind::Cifar100 => Some(tarball(
                "cifar-100-binary.tar.gz",
                "03b5dce01913d631647c71ecec9e9cb8",
                168_513_733,
            )),
        }
    }

    fn url(&self, mirror: &str, file: &RemoteFile) -> String {
        if mirror.ends_with('/') {
            format!("{mirror}{}", file.name)
        } else {
            format!("{mirror}/{}", file.name)
        }
    }
}

/// The folder `data download` writes to when no `--data-dir` is given: the user's data
/// folder among [`super::default_data_dir`] (never the system-wide `/usr/share` one).
pub fn default_target_dir(kind: DatasetKind) -> Option<PathBuf> {
    super::default_data_dir(kind)
        .into_iter()
        .find(|d| !d.starts_with("/usr"))
}

/// Receives progress; the command line shows a bar, tests use [`NoProgress`].
pub trait Progress: Sync {
    /// A transfer of `name` starts (`done` bytes already on disk from an earlier attempt).
    fn start(&self, name: &str, total: Option<u64>, done: u64);
    fn advance(&self, bytes: u64);
    fn finish(&self);
    /// A line of information (skipped file, retry, checksum).
    fn message(&self, line: &str);
}

/// Ignores all progress.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: Option<u64>, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
    fn message(&self, _: &str) {}
}

/// A progress bar on stderr (hidden when stderr is not a terminal; messages still print).
#[derive(Default)]
pub struct BarProgress {
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl BarProgress {
    pub fn new() -> BarProgress {
        BarProgress::default()
    }

    fn with_bar(&self, f: impl FnOnce(&mut Option<indicatif::ProgressBar>)) {
        let mut guard = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
    }
}

impl Progress for BarProgress {
    fn start(&self, name: &str, total: Option<u64>, done: u64) {
        let bar = indicatif::ProgressBar::with_draw_target(
            total,
            indicatif::ProgressDrawTarget::stderr(),
        );
        let template = if total.is_some() {
            "{prefix:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        } else {
            "{prefix:30} {spinner} {bytes} {bytes_per_sec}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(name.to_string());
        bar.set_position(done);
        self.with_bar(|b| {
            if let Some(old) = b.replace(bar) {
                old.finish_and_clear();
            }
        });
    }

    fn advance(&self, bytes: u64) {
        self.with_bar(|b| {
            if let Some(bar) = b {
                bar.inc(bytes);
            }
        });
    }

    fn finish(&self) {
        self.with_bar(|b| {
            if let Some(bar) = b.take() {
                bar.finish();
            }
        });
    }

    fn message(&self, line: &str) {
        self.with_bar(|b| match b {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        });
    }
}

/// Everything that can go wrong while downloading. Messages are shown to users as is.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{0} is built in; there is nothing to download")]
    BuiltIn(DatasetKind),
    #[error("no folder to download to: neither XDG_DATA_HOME nor HOME is set; pass --data-dir")]
    NoFolder,
    /// Some files could not be fetched and verified from any mirror.
    #[error("{}", offline_message(.dataset, .dir, .missing, .attempts, .mirrors))]
    Unavailable {
        dataset: DatasetKind,
        dir: PathBuf,
        /// Files still missing, with their MD5.
        missing: Vec<RemoteFile>,
        /// One line per failed attempt (URL and reason).
        attempts: Vec<String>,
        mirrors: Vec<String>,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot extract {}: {what}", path.display())]
    Archive { path: PathBuf, what: String },
    /// The files were verified but the loader refused them (would be a bug in the sources).
    #[error("downloaded files do not load: {0}")]
    Load(#[from] DataError),
}

fn offline_message(
    dataset: &DatasetKind,
    dir: &Path,
    missing: &[RemoteFile],
    attempts: &[String],
    mirrors: &[String],
) -> String {
    let mut s = format!(
        "{dataset}: could not download {} file(s) from any mirror:\n",
        missing.len()
    );
    for a in attempts {
        s.push_str(&format!("  - {a}\n"));
    }
    s.push_str(&format!(
        "Offline, or behind a proxy? Place these files by hand in {}:\n",
        dir.display()
    ));
    for f in missing {
        s.push_str(&format!("  {}  (md5 {})\n", f.name, f.md5));
    }
    s.push_str(&format!("from one of: {}", mirrors.join(", ")));
    if *dataset == DatasetKind::FashionMnist {
        s.push_str(
            "\nOn Debian/Ubuntu: apt-get install dataset-fashion-mnist \
             (installs /usr/share/datasets/fashion-mnist, which is searched automatically)",
        );
    }
    if matches!(dataset, DatasetKind::Cifar10 | DatasetKind::Cifar100) {
        s.push_str("\nThen run this command again: it verifies and extracts the archive.");
    }
    s
}

/// How a file came to be in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    Downloaded,
    AlreadyPresent,
}

/// One verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub md5: String,
    pub sha256: String,
    pub status: FileStatus,
    /// The URL it came from (None when already present).
    pub url: Option<String>,
}

/// The result of a successful download.
#[derive(Debug, Clone)]
pub struct DownloadReport {
    pub dir: PathBuf,
    pub files: Vec<FileReport>,
    pub checksums_file: PathBuf,
    /// Sizes of the loaded train and test sets (the proof that it loads).
    pub train_len: usize,
    pub test_len: usize,
    pub source: String,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DownloadError + 'a {
    move |source| DownloadError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Downloads, verifies (and extracts) `source` into `dir`, writes `CHECKSUMS`, then loads
/// the dataset from `dir` to prove it is usable. Uses the default [`Limits`].
pub fn download_dataset(
    source: &Source,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<DownloadReport, DownloadError> {
    download_dataset_with(source, dir, progress, Limits::default())
}

/// [`download_dataset`] with explicit network bounds.
pub fn download_dataset_with(
    source: &Source,
    dir: &Path,
    progress: &dyn Progress,
    limits: Limits,
) -> Result<DownloadReport, DownloadError> {
    if !source.kind.needs_files() {
        return Err(DownloadError::BuiltIn(source.kind));
    }
    fs::create_dir_all(dir).map_err(io_err("cannot create the folder", dir))?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(limits.connect_timeout)
        .timeout_read(limits.read_timeout)
        .user_agent(concat!("selfdistill/", env!("CARGO_PKG_VERSION")))
        .build();
    let mut reports = Vec::new();
    let mut missing = Vec::new();
    let mut attempts = Vec::new();
    let mut unreachable = Vec::new();
    for file in &source.files {
        let mut tried = Tried {
            attempts: &mut attempts,
            unreachable: &mut unreachable,
        };
        match fetch_file(&agent, source, file, dir, progress, limits, &mut tried)? {
            Some(r) => reports.push(r),
            None => missing.push(file.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(DownloadError::Unavailable {
            dataset: source.kind,
            dir: dir.to_path_buf(),
            missing,
            attempts,
            mirrors: source.mirrors.clone(),
        });
    }
    if source.archive == Some(Archive::TarGz) {
        for r in &reports {
            extract_tar_gz(r, dir, progress)?;
        }
    }
    let checksums_file = dir.join(CHECKSUMS_FILE);
    write_checksums(&checksums_file, &reports)?;
    let loaded = super::load(
        source.kind,
        &DataOptions {
            data_dir: Some(dir.to_path_buf()),
            ..Default::default()
        },
    )?;
    Ok(DownloadReport {
        dir: dir.to_path_buf(),
        files: reports,
        checksums_file,
        train_len: loaded.train.len(),
        test_len: loaded.test.len(),
        source: loaded.source,
    })
}

/// MD5 and SHA-256 (lowercase hex) and size of a file.
pub fn file_digests(path: &Path) -> io::Result<(String, String, u64)> {
    let mut f = File::open(path)?;
    let mut md5 = md5::Context::new();
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        md5.consume(&buf[..n]);
        sha.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((
        format!("{:x}", md5.finalize()),
        hex(&sha.finalize()),
        n_total,
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn part_path(dir: &Path, file: &RemoteFile) -> PathBuf {
    dir.join(format!("{}{PART_SUFFIX}", file.name))
}

/// What failed so far: one line per failed attempt, and mirrors whose host could not be
/// reached (not tried again for the remaining files).
struct Tried<'a> {
    attempts: &'a mut Vec<String>,
    unreachable: &'a mut Vec<String>,
}

/// Gets one file into place; `Ok(None)` when every mirror failed (reasons in `tried`).
fn fetch_file(
    agent: &ureq::Agent,
    source: &Source,
    file: &RemoteFile,
    dir: &Path,
    progress: &dyn Progress,
    limits: Limits,
    tried: &mut Tried<'_>,
) -> Result<Option<FileReport>, DownloadError> {
    let target = dir.join(&file.name);
    if target.is_file() {
        let (md5, sha256, bytes) = file_digests(&target).map_err(io_err("cannot read", &target))?;
        if md5 == file.md5 {
            progress.message(&format!("{}: already present, checksum ok", file.name));
            return Ok(Some(FileReport {
                name: file.name.clone(),
                path: target,
                bytes,
                md5,
                sha256,
                status: FileStatus::AlreadyPresent,
                url: None,
            }));
        }
        progress.message(&format!(
            "{}: present but md5 {md5} differs from {}; downloading again",
            file.name, file.md5
        ));
    }
    let part = part_path(dir, file);
    for mirror in &source.mirrors {
        if tried.unreachable.contains(mirror) {
            continue;
        }
        let url = source.url(mirror, file);
        let mut complete = false;
        for attempt in 0..limits.attempts_per_mirror.max(1) {
            match transfer(agent, &url, &part, file, progress) {
                Ok(()) => {
                    complete = true;
                    break;
                }
                Err(Failure::Retry(why)) => {
                    let last = attempt + 1 == limits.attempts_per_mirror.max(1);
                    tried.attempts.push(format!("{url}: {why}"));
                    if !last {
                        progress.message(&format!("{url}: {why}; resuming"));
                    }
                }
                Err(Failure::NextMirror(why)) => {
                    tried.attempts.push(format!("{url}: {why}"));
                    progress.message(&format!("{url}: {why}"));
                    break;
                }
                Err(Failure::Unreachable(why)) => {
                    tried
                        .attempts
                        .push(format!("{url}: {why} (mirror not tried again)"));
                    progress.message(&format!("{url}: {why}"));
                    tried.unreachable.push(mirror.clone());
                    break;
                }
                Err(Failure::Local(e)) => return Err(e),
            }
        }
        if !complete {
            continue;
        }
        let (md5, sha256, bytes) = file_digests(&part).map_err(io_err("cannot read", &part))?;
        if md5 != file.md5 {
            let _ = fs::remove_file(&part);
            let why = format!(
                "checksum mismatch for {}: expected md5 {}, got {md5} ({bytes} bytes); deleted",
                file.name, file.md5
            );
            progress.message(&format!("{url}: {why}"));
            tried.attempts.push(format!("{url}: {why}"));
            continue;
        }
        File::open(&part)
            .and_then(|f| f.sync_all())
            .map_err(io_err("cannot sync", &part))?;
        fs::rename(&part, &target).map_err(io_err("cannot rename into place", &target))?;
        progress.message(&format!("{}: md5 ok, sha256 {sha256}", file.name));
        return Ok(Some(FileReport {
            name: file.name.clone(),
            path: target,
            bytes,
            md5,
            sha256,
            status: FileStatus::Downloaded,
            url: Some(url),
        }));
    }
    Ok(None)
}

/// Why one request did not produce a complete `.part`.
enum Failure {
    /// The transfer broke off; the `.part` is kept for a resumed attempt.
    Retry(String),
    /// This mirror cannot serve the file (HTTP error, bad response).
    NextMirror(String),
    /// The mirror's host cannot be reached at all (name lookup or connection failed).
    Unreachable(String),
    /// The local disk failed: no mirror can help.
    Local(DownloadError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Retry(s) | Failure::NextMirror(s) | Failure::Unreachable(s) => f.write_str(s),
            Failure::Local(e) => write!(f, "{e}"),
        }
    }
}

/// One HTTP request appending to (resume) or rewriting `part`.
fn transfer(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    file: &RemoteFile,
    progress: &dyn Progress,
) -> Result<(), Failure> {
    let mut have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if file.size.is_some_and(|size| have > size) {
        let _ = fs::remove_file(part);
        have = 0;
    }
    if file.size == Some(have) && have > 0 {
        // A complete part from an earlier run: verify it as is.
        return Ok(());
    }
    let mut request = agent.get(url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(416, _)) if have > 0 => {
            // Range not satisfiable: the part is unusable for this server; start over.
            let _ = fs::remove_file(part);
            return Err(Failure::Retry(
                "server refused to resume (HTTP 416); restarting".into(),
            ));
        }
        Err(ureq::Error::Status(code, r)) => {
            return Err(Failure::NextMirror(format!(
                "HTTP {code} {}",
                r.status_text()
            )))
        }
        Err(ureq::Error::Transport(t)) => {
            // The URL is already in the attempt line: keep kind and message only.
            let why = match t.message() {
                Some(m) => format!("{}: {m}", t.kind()),
                None => t.kind().to_string(),
            };
            return Err(match t.kind() {
                ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed => {
                    Failure::Unreachable(why)
                }
                _ => Failure::NextMirror(why),
            });
        }
    };
    let resumed = have > 0
        && response.status() == 206
        && response
            .header("Content-Range")
            .is_some_and(|r| r.trim().starts_with(&format!("bytes {have}-")));
    if response.status() == 206 && !resumed {
        return Err(Failure::NextMirror(format!(
            "unexpected partial response (Content-Range {:?})",
            response.header("Content-Range")
        )));
    }
    let start = if resumed {
        have
    } else {
        if have > 0 {
            progress.message(&format!(
                "{url}: server does not resume (HTTP {}); restarting {}",
                response.status(),
                file.name
            ));
        }
        0
    };
    let length: Option<u64> = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse().ok());
    let total = length.map(|l| l + start).or(file.size);
    let mut out = if resumed {
        OpenOptions::new().append(true).open(part)
    } else {
        File::create(part)
    }
    .map_err(|e| Failure::Local(io_err("cannot write", part)(e)))?;
    progress.start(&file.name, total, start);
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    let limit = file.size.map(|s| s.saturating_sub(start));
    let result = loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                break Err(Failure::Retry(format!(
                    "connection broke after {} bytes: {e}",
                    start + received
                )))
            }
        };
        if let Err(e) = out.write_all(&buf[..n]) {
            break Err(Failure::Local(io_err("cannot write", part)(e)));
        }
        received += n as u64;
        progress.advance(n as u64);
        if limit.is_some_and(|l| received > l) {
            // Bigger than the official file: not what we asked for.
            break Err(Failure::NextMirror(format!(
                "server sent more than the expected {} bytes",
                file.size.unwrap_or(0)
            )));
        }
    };
    let flushed = out.flush();
    progress.finish();
    result?;
    flushed.map_err(|e| Failure::Local(io_err("cannot write", part)(e)))?;
    if let Some(len) = length {
        if received < len {
            return Err(Failure::Retry(format!(
                "connection closed after {} of {} bytes",
                start + received,
                start + len
            )));
        }
    }
    Ok(())
}

/// Extracts a verified `.tar.gz` into `dir` through a temporary folder, then moves each
/// top-level entry into place. Skipped when a marker says this very archive was extracted
/// and its entries are still there.
fn extract_tar_gz(
    report: &FileReport,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<(), DownloadError> {
    let marker = dir.join(format!(".{}.extracted", report.name));
    if let Ok(text) = fs::read_to_string(&marker) {
        let mut lines = text.lines();
        if lines.next() == Some(report.md5.as_str()) {
            let entries: Vec<&str> = lines.collect();
            if !entries.is_empty() && entries.iter().all(|e| dir.join(e).exists()) {
                progress.message(&format!("{}: already extracted", report.name));
                return Ok(());
            }
        }
    }
    let tmp = dir.join(format!(".{}.extracting", report.name));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err("cannot remove", &tmp))?;
    }
    fs::create_dir(&tmp).map_err(io_err("cannot create the folder", &tmp))?;
    let unpacked = unpack_tar_gz(&report.path, &tmp, progress, &report.name);
    if let Err(e) = unpacked {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let mut moved = Vec::new();
    for entry in fs::read_dir(&tmp).map_err(io_err("cannot read", &tmp))? {
        let entry = entry.map_err(io_err("cannot read", &tmp))?;
        let dest = dir.join(entry.file_name());
        if dest.is_dir() {
            fs::remove_dir_all(&dest).map_err(io_err("cannot replace", &dest))?;
        } else if dest.exists() {
            fs::remove_file(&dest).map_err(io_err("cannot replace", &dest))?;
        }
        fs::rename(entry.path(), &dest).map_err(io_err("cannot move into place", &dest))?;
        moved.push(entry.file_name().to_string_lossy().into_owned());
    }
    fs::remove_dir_all(&tmp).map_err(io_err("cannot remove", &tmp))?;
    if moved.is_empty() {
        return Err(DownloadError::Archive {
            path: report.path.clone(),
            what: "the archive is empty".into(),
        });
    }
    let text = format!("{}\n{}\n", report.md5, moved.join("\n"));
    fs::write(&marker, text).map_err(io_err("cannot write", &marker))?;
    Ok(())
}

/// Unpacks the regular files and folders of a `.tar.gz` into `into`.
fn unpack_tar_gz(
    path: &Path,
    into: &Path,
    progress: &dyn Progress,
    name: &str,
) -> Result<(), DownloadError> {
    let archive_err = |what: String| DownloadError::Archive {
        path: path.to_path_buf(),
        what,
    };
    let file = File::open(path).map_err(io_err("cannot read", path))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    progress.message(&format!("{}: extracting", name));
    let entries = archive.entries().map_err(|e| archive_err(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| archive_err(e.to_string()))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue; // no links or devices from an archive
        }
        // unpack_in refuses paths that would leave `into` (absolute or with `..`).
        let inside = entry
            .unpack_in(into)
            .map_err(|e| archive_err(e.to_string()))?;
        if !inside {
            return Err(archive_err(format!(
                "entry {:?} points outside the folder",
                entry
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// Writes `CHECKSUMS` atomically, in the BSD-tagged format that `cksum -c` checks.
fn write_checksums(path: &Path, files: &[FileReport]) -> Result<(), DownloadError> {
    let mut text = String::from(
        "# Verified by `selfdistill data download`: MD5 as published by the sources, SHA-256\n\
         # computed from the verified files. Check with: cksum -c CHECKSUMS\n",
    );
    for f in files {
        text.push_str(&format!("MD5 ({}) = {}\n", f.name, f.md5));
        text.push_str(&format!("SHA256 ({}) = {}\n", f.name, f.sha256));
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).map_err(io_err("cannot write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("cannot write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_sources_cover_every_file_backed_dataset() {
        for kind in DatasetKind::ALL {
            let source = Source::official(kind);
            assert_eq!(source.is_some(), kind.needs_files(), "{kind}");
            if let Some(s) = source {
                assert!(!s.mirrors.is_empty());
                for f in &s.files {
                    assert_eq!(f.md5.len(), 32, "{}", f.name);
                    assert!(f.md5.chars().all(|c| c.is_ascii_hexdigit()));
                }
            }
        }
        let mnist = Source::official(DatasetKind::Mnist).unwrap();
        assert_eq!(
            mnist.url(&mnist.mirrors[0], &mnist.files[0]),
            "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"
        );
    }

    #[test]
    fn default_target_is_a_user_folder() {
        if let Some(d) = default_target_dir(DatasetKind::FashionMnist) {
            assert!(d.ends_with("selfdistill/datasets/fashion-mnist"));
        }
        assert_eq!(default_target_dir(DatasetKind::Digits), None);
    }

    #[test]
    fn digests_of_a_known_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("abc");
        fs::write(&p, b"abc").unwrap();
        let (md5, sha, n) = file_digests(&p).unwrap();
        assert_eq!(md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(n, 3);
    }

    #[test]
    fn offline_message_names_files_folder_and_debian_package() {
        let source = Source::official(DatasetKind::FashionMnist).unwrap();
        let err = DownloadError::Unavailable {
            dataset: DatasetKind::FashionMnist,
            dir: PathBuf::from("/some/dir"),
            missing: source.files.clone(),
            attempts: vec!["http://x/: connection refused".into()],
            mirrors: source.mirrors.clone(),
        };
        let msg = err.to_string();
        for f in &source.files {
            assert!(msg.contains(&f.name), "{msg}");
        }
        assert!(msg.contains("/some/dir"), "{msg}");
        assert!(
            msg.contains("apt-get install dataset-fashion-mnist"),
            "{msg}"
        );
    }
}
