//! selfdistill: knowledge-distillation experiments (baseline, Born-Again generations and
//! self-distillation) on Burn, with a terminal dashboard and a headless runner.
//!
//! Data flows one way: `data` -> `train` (trainer thread) -> events -> run store,
//! headless printer or dashboard; controls flow back. Nothing in `train` knows about
//! the terminal.

pub mod alloc;
pub mod bench;
pub mod data;
pub mod distill;
pub mod headless;
pub mod kernels;
pub mod model;
pub mod pool;
pub mod preset;
pub mod report;
pub mod store;
pub mod train;
