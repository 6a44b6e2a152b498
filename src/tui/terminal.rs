//! The real terminal: raw mode + alternate screen behind a guard that restores it on
//! drop, on a panic (chained hook) and on Ctrl-C; the crossterm reader thread; and the
//! synchronized-update brackets around each frame.

use std::io::{self, BufWriter, Stdout, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use crossterm::event::{self, Event, KeyEventKind};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, BeginSynchronizedUpdate, EndSynchronizedUpdate,
    EnterAlternateScreen, LeaveAlternateScreen,
};
use crossterm::{cursor, execute};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use super::app::Input;

pub type RealTerminal = Terminal<CrosstermBackend<BufWriter<Stdout>>>;

/// The terminal is in raw mode / alternate screen right now.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

/// Name of the thread that reads the keyboard.
pub const INPUT_THREAD: &str = "selfdistill-input";

/// Undoes raw mode and the alternate screen; safe to call twice.
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let mut out = io::stdout();
        let _ = execute!(
            out,
            EndSynchronizedUpdate,
            LeaveAlternateScreen,
            cursor::Show
        );
        let _ = out.flush();
    }
}

/// Restores the terminal before the default hook prints, so the message is readable.
/// Panics in the trainer (and Burn's worker threads) are caught by the trainer and
/// shown as its error screen: printing them over the dashboard would garble it.
fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let ours = thread
                .name()
                .is_some_and(|n| n == "main" || n == INPUT_THREAD);
            if ACTIVE.load(Ordering::SeqCst) && !ours {
                return;
            }
            restore();
            previous(info);
            if thread.name() == Some(INPUT_THREAD) {
                // Without input the UI cannot be driven: leave instead of hanging.
                std::process::exit(101);
            }
        }));
    });
}

pub struct TerminalGuard;

impl TerminalGuard {
    pub fn enter() -> io::Result<(TerminalGuard, RealTerminal)> {
        install_panic_hook();
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let guard = TerminalGuard;
        let mut out = io::stdout();
        execute!(out, EnterAlternateScreen, cursor::Hide)?;
        // Frames are written whole through a buffer: fewer, larger writes over SSH.
        let terminal = Terminal::new(CrosstermBackend::new(BufWriter::with_capacity(
            1 << 16,
            io::stdout(),
        )))?;
        Ok((guard, terminal))
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

pub fn begin_sync() {
    let _ = execute!(io::stdout(), BeginSynchronizedUpdate);
}

pub fn end_sync() {
    let _ = execute!(io::stdout(), EndSynchronizedUpdate);
}

/// Reads keys and resizes on its own thread; ends when `stop` is set or the terminal
/// goes away (then it says so with `Input::Closed`).
pub fn spawn_input(tx: Sender<Input>, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(INPUT_THREAD.into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let msg = match event::poll(Duration::from_millis(100)) {
                    Ok(false) => continue,
                    Ok(true) => match event::read() {
                        Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => Input::Key(k),
                        Ok(Event::Resize(..)) => Input::Resize,
                        Ok(_) => continue,
                        Err(_) => Input::Closed,
                    },
                    Err(_) => Input::Closed,
                };
                let closed = matches!(msg, Input::Closed);
                if tx.send(msg).is_err() || closed {
                    return;
                }
            }
        })
}
