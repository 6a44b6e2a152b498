//! Hand-written CPU kernels for the ops where Burn's flex backend is the bottleneck
//! (found by profiling; see BENCHMARKS.md). Plain functions on slices, checked against
//! direct definitions here and against Burn's ops in `model::ops` and `model::norm`.

pub mod batch_norm;
pub mod buffer;
pub mod chanvec;
pub mod conv2d;
pub mod direct;
pub mod simd;
pub mod wgrad;

use batch_norm::Epilogue;

/// What the forward pass does to each output value as it writes it: `v * scale[c] +
/// shift[c]` (a convolution's bias is a shift; an inference-mode batch norm folds into
/// both), then the batch norm's [`Epilogue`] (plus the residual's value, ReLU). The
/// convolution kernels apply it as they store their outputs ([`direct::conv_dense`],
/// [`chanvec::conv`]) or in the pass that drops the junk columns (`conv2d`'s GEMM path),
/// while the sample's output is in cache: no separate pass over the whole activation.
///
/// Each value is `v * scale + shift` in f32 with the epilogue of the batch-norm kernel, the
/// same expressions as [`batch_norm::scale_shift`] after [`conv2d::forward`]: fused and
/// separate give the same bits. (Its methods are in `conv2d`.)
#[derive(Clone, Copy, Debug, Default)]
pub struct OutputMap<'a> {
    pub scale: Option<&'a [f32]>,
    pub shift: Option<&'a [f32]>,
    /// Residual: output-shaped (all samples).
    pub epilogue: Epilogue<'a>,
}
