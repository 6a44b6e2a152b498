//! Training: the trainer thread, its events and controls, schedules and backends.
//! Nothing here knows a user interface exists.

pub mod backend;
pub mod events;
pub mod readback;
pub mod schedule;
pub mod summary;
mod trainer;

pub use trainer::{
    load_data, prepare, prepare_resume, Faults, PreparedData, PreparedRun, RunHandle, RunOptions,
    FAULT_NAN_ENV, FAULT_PANIC_ENV,
};
