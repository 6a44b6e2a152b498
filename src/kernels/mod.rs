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
