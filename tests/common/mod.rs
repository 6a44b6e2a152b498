//! Helpers shared by the integration test crates.

use selfdistill::train::events::GenerationSummary;

/// What a generation ended with, as one line to compare between runs: every number but
/// its wall time and teacher-cache counts (both depend on the machine or on where the
/// job was resumed, not on what it computed).
pub fn generation_numbers(g: &GenerationSummary) -> String {
    format!(
        "{} best {} @{} test {} final {} {} steps {} repl {}",
        g.key,
        g.best_val_acc,
        g.best_step,
        g.test_acc_at_best,
        g.final_val_acc,
        g.final_test_acc,
        g.steps,
        g.teacher_replacements
    )
}
