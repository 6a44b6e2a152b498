//! State tests: resumed runs, watched runs' clocks, comparison labels.

use std::time::{Duration, Instant};

use selfdistill::train::events::{Control, Method, RunStatus, TrainEvent};

use super::fixtures::{eval, key, plan, step};
use super::series::Series;
use super::state::{short_labels, RunView};

/// Self g1 (10 steps an epoch): 30 steps with an evaluation every 10, and a pause.
fn self_g1_events(upto: u64) -> Vec<TrainEvent> {
    let k = key(Method::SelfDistill, 1);
    let mut evs = vec![TrainEvent::Plan(plan())];
    for s in 1..=upto {
        evs.push(step(k, s, s, 1.0 / s as f64, 4.0));
        if s % 10 == 0 {
            evs.push(eval(
                k,
                (s / 10) as usize,
                0.5 + s as f64 / 100.0,
                0.5,
                s as f64,
            ));
        }
        if s == 25 {
            evs.push(TrainEvent::ControlApplied {
                key: k,
                step: 26,
                control: Control::Pause,
            });
        }
    }
    evs
}

#[test]
fn a_resume_drops_what_the_interrupted_process_drew_past_the_resume_point() {
    let k = key(Method::SelfDistill, 1);
    let mut evs = self_g1_events(28);
    evs.push(TrainEvent::Error {
        message: "killed".into(),
    });
    evs.push(TrainEvent::Finished {
        status: RunStatus::Failed,
        wall_s: 9.0,
    });
    // The new process: plan again, then the resume point after step 20.
    evs.push(TrainEvent::Plan(plan()));
    evs.push(TrainEvent::Resumed { key: k, step: 20 });
    let now = Instant::now();
    let mut v = RunView::live("quick");
    for ev in &evs {
        v.apply(ev, now);
    }
    let c = &v.curves[&Method::SelfDistill];
    let max_x = |pts: &[(f64, f64)]| pts.iter().map(|p| p.0).fold(f64::MIN, f64::max);
    assert_eq!(c.val.len(), 2, "the evaluation at step 20 stays");
    assert!(
        max_x(&c.loss.points()) <= 2.0 + 1e-9,
        "{:?}",
        c.loss.points()
    );
    assert!(max_x(&c.loss_ema.points()) <= 2.0 + 1e-9);
    assert_eq!(c.loss.points().len(), 20);
    assert!(v.pauses.is_empty(), "the pause at step 26 was superseded");
    assert!(v.is_running() && v.status.is_none() && v.error.is_none());
    assert_eq!(v.step, 20);
    // The redone steps draw on from there.
    v.apply(&step(k, 21, 21, 0.04, 4.0), now);
    assert_eq!(v.curves[&Method::SelfDistill].loss.points().len(), 21);
    assert_eq!(v.summary.evals.len(), 2, "the summary agrees");
}

#[test]
fn truncating_a_tail_keeps_an_earlier_jobs_points_further_right() {
    // Seed 1 drew x 0.1..6.0, then seed 2 drew 0.1..1.0 and resumes at its start.
    let mut s = Series::default();
    for i in 1..=60 {
        s.push(i as f64 / 10.0, 1.0);
    }
    for i in 1..=10 {
        s.push(i as f64 / 10.0, 2.0);
    }
    s.truncate_tail_after(0.0);
    let pts = s.points();
    assert_eq!(pts.len(), 60, "only seed 2's points go");
    assert!(pts.iter().all(|p| p.1 == 1.0));
}

#[test]
fn a_watched_runs_clock_starts_from_the_recorded_time() {
    let now = Instant::now();
    let v = RunView::watched("x", &self_g1_events(25), true, now);
    // The last evaluation (step 20) was 20 s into the job.
    let elapsed = v.clock.elapsed(now + Duration::from_secs(1));
    assert!((20.5..22.0).contains(&elapsed.as_secs_f64()), "{elapsed:?}");
    assert!(v.paused && v.is_running());
    assert!(v.eta(now).is_some());
    // Nobody writes it: not running, no ETA, a frozen clock.
    let v = RunView::watched("x", &self_g1_events(25), false, now);
    assert!(!v.is_running() && v.eta(now).is_none());
    let a = v.clock.elapsed(now + Duration::from_secs(5));
    assert_eq!(a, v.clock.elapsed(now + Duration::from_secs(50)));
}

#[test]
fn labels_are_the_distinguishing_end_of_run_ids() {
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        short_labels(&ids(&["20260101-000000-quick", "20260101-000512-quick"])),
        ids(&["000000-quick", "000512-quick"])
    );
    // Different days: cut at the end would read the same, so the start stays.
    assert_eq!(
        short_labels(&ids(&["20260101-000000-quick", "20260102-000000-quick"])),
        ids(&["20260101-0000…", "20260102-0000…"])
    );
    assert_eq!(
        short_labels(&ids(&[
            "20260101-000000-cifar10-resnet20",
            "20260101-000512-cifar10-resnet20"
        ])),
        ids(&["000000-cifar1…", "000512-cifar1…"])
    );
    assert_eq!(
        short_labels(&ids(&["20260101-000000-quick", "20260101-000000-quick-1"])),
        ids(&["quick", "quick-1"])
    );
    assert_eq!(short_labels(&ids(&["only-one"])), ids(&["only-one"]));
}
