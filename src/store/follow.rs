//! Attaching to a run that another process writes: follow its event log, and send it
//! controls through a file in the run folder.
//!
//! Controls travel as JSON lines appended to `<run>/control.jsonl` (one `write` per
//! line with `O_APPEND`, so concurrent writers never interleave). The process that
//! trains the run polls the file and forwards new lines to its trainer, which echoes
//! every applied control in the event log, where the watcher sees it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::Sender;

use super::EVENTS_FILE;
use crate::train::events::{Control, TrainEvent};

pub const CONTROL_FILE: &str = "control.jsonl";

/// How often the trainer's process looks for new controls, and a watcher for events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(150);

/// Appends a control for the process training the run in `run_dir`.
pub fn append_control(run_dir: &Path, control: Control) -> Result<()> {
    let path = run_dir.join(CONTROL_FILE);
    let mut line = serde_json::to_vec(&control)?;
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.write_all(&line)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads complete new lines of a growing file; a torn last line waits for its end.
struct LineTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl LineTail {
    fn from_start(path: PathBuf) -> LineTail {
        LineTail {
            path,
            offset: 0,
            partial: Vec::new(),
        }
    }

    fn from_end(path: PathBuf) -> LineTail {
        let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
        LineTail {
            path,
            offset,
            partial: Vec::new(),
        }
    }

    fn poll(&mut self) -> std::io::Result<Vec<String>> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            // The file was replaced by a shorter one: start over.
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut lines = Vec::new();
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1])
                .trim()
                .to_string();
            if !text.is_empty() {
                lines.push(text);
            }
        }
        Ok(lines)
    }
}

/// Follows `events.jsonl` of a run from its beginning.
pub struct EventFollower {
    tail: LineTail,
}

impl EventFollower {
    pub fn new(run_dir: &Path) -> EventFollower {
        EventFollower {
            tail: LineTail::from_start(run_dir.join(EVENTS_FILE)),
        }
    }

    /// Events appended since the last call (lines that do not parse are skipped: a
    /// killed writer can leave one torn line behind).
    pub fn poll(&mut self) -> Result<Vec<TrainEvent>> {
        let lines = self
            .tail
            .poll()
            .with_context(|| format!("cannot read {}", self.tail.path.display()))?;
        Ok(lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// Forwards controls appended to `<run>/control.jsonl` from now on to `controls`,
/// until `done` is set (the trainer finished) or the trainer is gone.
pub fn spawn_control_inbox(
    run_dir: &Path,
    controls: Sender<Control>,
    done: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let mut tail = LineTail::from_end(run_dir.join(CONTROL_FILE));
    std::thread::Builder::new()
        .name("selfdistill-control-inbox".into())
        .spawn(move || {
            while !done.load(Ordering::Acquire) {
                for line in tail.poll().unwrap_or_default() {
                    if let Ok(control) = serde_json::from_str::<Control>(&line) {
                        if controls.send(control).is_err() {
                            return;
                        }
                    }
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        })
        .expect("spawning a thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_returns_only_complete_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        let mut tail = LineTail::from_start(path.clone());
        assert!(
            tail.poll().unwrap().is_empty(),
            "a missing file is just empty"
        );
        std::fs::write(&path, "a\nb\npart").unwrap();
        assert_eq!(tail.poll().unwrap(), vec!["a", "b"]);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"ial\nc\n").unwrap();
        assert_eq!(tail.poll().unwrap(), vec!["partial", "c"]);
        assert!(tail.poll().unwrap().is_empty());
    }

    #[test]
    fn controls_round_trip_through_the_control_file() {
        let dir = tempfile::tempdir().unwrap();
        append_control(dir.path(), Control::Pause).unwrap(); // before the inbox: not replayed
        let mut tail = LineTail::from_end(dir.path().join(CONTROL_FILE));
        append_control(dir.path(), Control::SetTemperature(2.5)).unwrap();
        let lines = tail.poll().unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(
            serde_json::from_str::<Control>(&lines[0]).unwrap(),
            Control::SetTemperature(2.5)
        );
    }
}
