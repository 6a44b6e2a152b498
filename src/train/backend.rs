//! Backend choice at run time. CPU is Burn's flex backend; CUDA (burn-cuda) exists only
//! in builds with the `cuda` feature and is probed before use, because a missing driver
//! surfaces as a panic on Burn's first tensor operation rather than as an error.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    #[default]
    Cpu,
    Cuda,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
        }
    }

    pub fn parse(s: &str) -> Option<BackendKind> {
        match s {
            "cpu" => Some(BackendKind::Cpu),
            "cuda" => Some(BackendKind::Cuda),
            _ => None,
        }
    }

    /// Whether this binary was built with the backend.
    pub fn compiled_in(self) -> bool {
        match self {
            BackendKind::Cpu => true,
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BackendError {
    #[error(
        "backend `cuda` is not available in this build: rebuild with `cargo build --release --features cuda` \
         (needs an NVIDIA driver at run time), or use `--backend cpu`"
    )]
    NotCompiled,
    #[error("backend `cuda` failed to start: {0}. Check that an NVIDIA GPU and driver are present (`nvidia-smi`), or use `--backend cpu`")]
    Unavailable(String),
}

/// Fails with a clear error when `kind` cannot run here.
pub fn check_available(kind: BackendKind) -> Result<(), BackendError> {
    match kind {
        BackendKind::Cpu => Ok(()),
        BackendKind::Cuda if !kind.compiled_in() => Err(BackendError::NotCompiled),
        BackendKind::Cuda => probe_cuda(),
    }
}

/// `$SELFDISTILL_CACHE_DIR`, else `<user cache dir>/selfdistill`: GPU builds keep CubeCL's
/// autotune picks under it, in `autotune/`.
pub fn cache_root() -> PathBuf {
    cache_root_from(std::env::var_os("SELFDISTILL_CACHE_DIR"))
}

fn cache_root_from(env: Option<OsString>) -> PathBuf {
    match env {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => directories::ProjectDirs::from("", "", "selfdistill")
            .map(|d| d.cache_dir().to_path_buf())
            .unwrap_or_else(|| std::env::temp_dir().join("selfdistill-cache")),
    }
}

/// The folder of CubeCL's autotune picks that a run on `kind` uses (none on the CPU). Its
/// kernels are timed and chosen once per shape and kept there, so two runs with the same
/// seed give the same numbers when they find the same picks (README, "CUDA").
pub fn autotune_cache(kind: BackendKind) -> Option<PathBuf> {
    match kind {
        BackendKind::Cpu => None,
        BackendKind::Cuda => Some(cache_root().join("autotune")),
    }
}

/// The GPU backend of `--features cuda` builds, and its device.
#[cfg(feature = "cuda")]
pub mod gpu {
    pub use burn::backend::{cuda::CudaDevice as GpuDevice, Cuda as Gpu};

    /// The first GPU. CubeCL's configuration is set before its first use: left to itself,
    /// CubeCL reads it from a `cubecl.toml` above the working directory and keeps its
    /// autotune picks in the `target/` of any Cargo project above it, so the kernels, and
    /// with them the numbers, would depend on where selfdistill was started.
    pub fn device() -> GpuDevice {
        configure_cubecl();
        GpuDevice::new(0)
    }

    fn configure_cubecl() {
        use burn::cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if CubeClRuntimeConfig::storage().lock().is_some() {
                return; // Already read by CubeCL: too late to set (and `set` would panic).
            }
            // CubeCL's defaults and its environment overrides (CUBECL_AUTOTUNE_LEVEL, logs).
            let mut config = CubeClRuntimeConfig::default().override_from_env();
            // CubeCL adds `autotune/` below this root.
            config.autotune.cache = CacheConfig::File(super::cache_root());
            CubeClRuntimeConfig::set(config);
        });
    }
}

#[cfg(feature = "cuda")]
fn probe_cuda() -> Result<(), BackendError> {
    use burn::prelude::*;
    use burn::tensor::ElementConversion;
    use gpu::Gpu;
    let result = catch_quietly(|| {
        let device = gpu::device();
        let t = Tensor::<Gpu, 1>::from_floats([1.0, 2.0], &device);
        t.sum().into_scalar().elem::<f32>()
    });
    match result {
        Ok(v) if (v - 3.0).abs() < 1e-6 => Ok(()),
        Ok(v) => Err(BackendError::Unavailable(format!(
            "probe computed {v} instead of 3"
        ))),
        Err(cause) => Err(BackendError::Unavailable(cause)),
    }
}

/// Runs `f`, turning a panic into the text of the first panic raised meanwhile, on any
/// thread, and silencing the default panic message (an expected failure, e.g. a missing
/// driver, is reported as an error instead). The first panic is the cause: when CUDA's
/// runtime fails to load the driver on its server thread, the caller's wait on that thread
/// fails after it (`RecvError`), and only that second panic reaches `catch_unwind`.
/// The panic hook is process-wide: keep `f` short.
pub fn catch_quietly<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, String> {
    use std::sync::{Arc, Mutex};
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let hook = std::panic::take_hook();
    let seen = Arc::clone(&first);
    std::panic::set_hook(Box::new(move |info| {
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get_or_insert_with(|| match panic_text(info.payload()) {
            Some(text) => text,
            // "panicked at FILE:LINE:COL:", and the message where it has one.
            None => info.to_string(),
        });
    }));
    let result = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    result.map_err(|p| {
        let first = first.lock().unwrap_or_else(|e| e.into_inner()).take();
        first.unwrap_or_else(|| panic_message(&*p))
    })
}

/// Serialises the tests that panic on purpose: the panic hook is process-wide, so a
/// `catch_quietly` under test could otherwise record another test's panic.
#[cfg(test)]
pub(crate) static PANIC_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(not(feature = "cuda"))]
fn probe_cuda() -> Result<(), BackendError> {
    Err(BackendError::NotCompiled)
}

/// Text of a caught panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    panic_text(p).unwrap_or_else(|| "unknown panic".to_string())
}

/// The payload's text, where it is text (`panic!` with a message).
fn panic_text(p: &(dyn std::any::Any + Send)) -> Option<String> {
    if let Some(s) = p.downcast_ref::<&str>() {
        Some(s.to_string())
    } else {
        p.downcast_ref::<String>().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_reports_the_first_panic_of_any_thread() {
        let _one_at_a_time = PANIC_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(catch_quietly(|| 7), Ok(7));
        // A message, literal or formatted.
        assert_eq!(
            catch_quietly(|| panic!("plain")),
            Err::<(), _>("plain".into())
        );
        let n = 3;
        assert_eq!(
            catch_quietly(|| panic!("formatted {n}")),
            Err::<(), _>("formatted 3".into())
        );
        // As with CUDA's runtime: a server thread fails, then the caller's wait on it.
        let err = catch_quietly(|| {
            let (tx, rx) = std::sync::mpsc::channel::<u32>();
            std::thread::spawn(move || {
                let _tx = tx;
                panic!("cannot load the driver");
            });
            rx.recv().unwrap()
        });
        assert_eq!(err, Err("cannot load the driver".into()));
        // A payload that is not text: the hook's "panicked at" line still locates it.
        let err = catch_quietly(|| std::panic::panic_any(42u8)).unwrap_err();
        assert!(
            err.contains("panicked at") && err.contains("backend.rs"),
            "{err}"
        );
        // The hook in place before is not called meanwhile, and is back after.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {
            CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let _ = catch_quietly(|| panic!("silenced"));
        let _ = std::panic::catch_unwind(|| panic!("after"));
        std::panic::set_hook(before);
        assert_eq!(CALLS.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn panic_messages_are_read_from_the_payload() {
        let _one_at_a_time = PANIC_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let literal = std::panic::catch_unwind(|| panic!("literal")).unwrap_err();
        let formatted = std::panic::catch_unwind(|| panic!("{}", 1 + 1)).unwrap_err();
        let other = std::panic::catch_unwind(|| std::panic::panic_any(1i32)).unwrap_err();
        std::panic::set_hook(hook);
        assert_eq!(panic_message(&*literal), "literal");
        assert_eq!(panic_message(&*formatted), "2");
        assert_eq!(panic_message(&*other), "unknown panic");
    }

    #[test]
    fn the_cache_root_is_the_env_override_else_the_user_cache_dir() {
        assert_eq!(
            cache_root_from(Some("/somewhere/else".into())),
            PathBuf::from("/somewhere/else")
        );
        // Unset and empty mean the default, which names the program and not the cwd.
        let default = cache_root_from(None);
        assert_eq!(cache_root_from(Some("".into())), default);
        assert!(default.ends_with("selfdistill"), "{}", default.display());
        assert!(default.is_absolute(), "{}", default.display());
        assert_eq!(autotune_cache(BackendKind::Cpu), None);
        assert_eq!(
            autotune_cache(BackendKind::Cuda).unwrap(),
            cache_root().join("autotune")
        );
    }

    #[test]
    fn cpu_is_always_available() {
        assert_eq!(check_available(BackendKind::Cpu), Ok(()));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let e = check_available(BackendKind::Cuda).unwrap_err();
        assert_eq!(e, BackendError::NotCompiled);
        assert!(e.to_string().contains("--features cuda"));
    }
}
