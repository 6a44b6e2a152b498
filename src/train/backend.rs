//! Backend choice at run time. CPU is Burn's flex backend; CUDA (burn-cuda) exists only
//! in builds with the `cuda` feature and is probed before use, because a missing driver
//! surfaces as a panic on Burn's first tensor operation rather than as an error.

use std::fmt;

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

#[cfg(feature = "cuda")]
fn probe_cuda() -> Result<(), BackendError> {
    use burn::backend::{cuda::CudaDevice, Cuda};
    use burn::prelude::*;
    use burn::tensor::ElementConversion;
    // Silence the default panic message while probing: a missing driver is expected.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| {
        let device = CudaDevice::new(0);
        let t = Tensor::<Cuda, 1>::from_floats([1.0, 2.0], &device);
        t.sum().into_scalar().elem::<f32>()
    });
    std::panic::set_hook(hook);
    match result {
        Ok(v) if (v - 3.0).abs() < 1e-6 => Ok(()),
        Ok(v) => Err(BackendError::Unavailable(format!(
            "probe computed {v} instead of 3"
        ))),
        Err(p) => Err(BackendError::Unavailable(panic_message(&p))),
    }
}

#[cfg(not(feature = "cuda"))]
fn probe_cuda() -> Result<(), BackendError> {
    Err(BackendError::NotCompiled)
}

/// Text of a caught panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
