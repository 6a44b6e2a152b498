//! Reducer tests: every binding, in the context it belongs to.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use selfdistill::store::RunInfo;
use selfdistill::train::events::Control;
use selfdistill::train::summary::RunSummary;

use super::fixtures::{past_run, scripted_run, state_with_run, watch_state};
use super::keys::{lookup, reduce, Action, Context, Effect, BINDINGS, WATCH_STALLED};
use super::state::{AppState, ConfirmKind, MenuFocus, Overlay, Screen};
use super::theme::Theme;

fn ch(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

/// A state with a live, running run, on `screen`.
fn running(screen: Screen) -> AppState {
    state_with_run(&scripted_run(false), screen)
}

fn with_past_runs(mut s: AppState) -> AppState {
    s.menu.runs = vec![
        RunInfo {
            dir: "/tmp/a".into(),
            id: "a".into(),
            summary: RunSummary::default(),
        },
        RunInfo {
            dir: "/tmp/b".into(),
            id: "b".into(),
            summary: RunSummary::default(),
        },
    ];
    s
}

/// A state where `ctx` takes keys.
fn in_context(ctx: Context) -> AppState {
    let mut s = with_past_runs(running(Screen::Dashboard));
    match ctx {
        Context::Global | Context::Run => {}
        Context::Dashboard => s.log_scroll = 1,
        Context::Menu => s.screen = Screen::Menu,
        Context::Compare => {
            s.menu.marked = vec!["a".into(), "b".into()];
            s.screen = Screen::Menu;
            reduce(&mut s, ch('c'));
            assert_eq!(s.screen, Screen::Comparison);
        }
        Context::Prompt => {
            s.overlay = Some(Overlay::TemperaturePrompt {
                buffer: "3".into(),
                error: None,
            })
        }
        Context::Confirm => s.overlay = Some(Overlay::Confirm(ConfirmKind::Stop)),
        Context::Overlay => s.overlay = Some(Overlay::Help),
    }
    s
}

#[test]
fn every_binding_is_reachable_in_its_context_and_does_something() {
    for b in BINDINGS {
        for k in b.keys {
            let mut s = in_context(b.context);
            let ev = k.example();
            let found = lookup(&s, &ev)
                .unwrap_or_else(|| panic!("{} in {:?} not found", b.label, b.context));
            assert_eq!(
                found.action, b.action,
                "{} in {:?} triggers {:?}",
                b.label, b.context, found.action
            );
            let before = (
                s.screen,
                s.overlay.clone(),
                s.ema,
                s.show_test,
                s.log_scroll,
                s.menu.focus,
                s.menu.preset_sel,
                s.flash.clone(),
            );
            let fx = reduce(&mut s, ev);
            let after = (
                s.screen,
                s.overlay.clone(),
                s.ema,
                s.show_test,
                s.log_scroll,
                s.menu.focus,
                s.menu.preset_sel,
                s.flash.clone(),
            );
            let changed = before != after || !fx.is_empty() || s.should_quit || s.quit_after_stop;
            // Up at the top of a list is the one key allowed to change nothing.
            let boundary = b.action == Action::Up && b.context == Context::Menu;
            assert!(
                changed || boundary,
                "{} ({:?}) had no effect in {:?}",
                b.label,
                b.action,
                b.context
            );
        }
    }
}

#[test]
fn pause_toggles_and_waits_for_the_trainer() {
    let mut s = running(Screen::Dashboard);
    assert_eq!(
        reduce(&mut s, ch('p')),
        vec![Effect::Control(Control::Pause)]
    );
    assert_eq!(s.run.as_ref().unwrap().requested_pause, Some(true));
    assert_eq!(
        reduce(&mut s, ch(' ')),
        vec![Effect::Control(Control::Resume)]
    );
    // Also from the comparison screen.
    s.screen = Screen::Comparison;
    assert_eq!(
        reduce(&mut s, ch('p')),
        vec![Effect::Control(Control::Pause)]
    );
}

#[test]
fn temperature_steps_build_on_pending_requests_and_clamp() {
    let mut s = running(Screen::Dashboard);
    assert_eq!(
        reduce(&mut s, ch('+')),
        vec![Effect::Control(Control::SetTemperature(4.5))]
    );
    assert_eq!(
        reduce(&mut s, ch('=')),
        vec![Effect::Control(Control::SetTemperature(5.0))]
    );
    assert_eq!(
        reduce(&mut s, ch('-')),
        vec![Effect::Control(Control::SetTemperature(4.5))]
    );
    s.run.as_mut().unwrap().requested_t = Some(0.3);
    assert_eq!(
        reduce(&mut s, ch('-')),
        vec![Effect::Control(Control::SetTemperature(0.1))]
    );
    s.run.as_mut().unwrap().requested_t = Some(99.8);
    assert_eq!(
        reduce(&mut s, ch('+')),
        vec![Effect::Control(Control::SetTemperature(100.0))]
    );
}

#[test]
fn typed_temperature_is_checked() {
    let mut s = running(Screen::Dashboard);
    assert!(reduce(&mut s, ch('T')).is_empty());
    for c in "250".chars() {
        reduce(&mut s, ch(c));
    }
    assert!(
        reduce(&mut s, code(KeyCode::Enter)).is_empty(),
        "250 is out of range"
    );
    assert!(matches!(
        &s.overlay,
        Some(Overlay::TemperaturePrompt { error: Some(_), .. })
    ));
    reduce(&mut s, code(KeyCode::Backspace));
    reduce(&mut s, code(KeyCode::Backspace));
    reduce(&mut s, ch('.'));
    reduce(&mut s, ch('5'));
    assert_eq!(
        reduce(&mut s, code(KeyCode::Enter)),
        vec![Effect::Control(Control::SetTemperature(2.5))]
    );
    assert_eq!(s.overlay, None);
    // Letters do nothing while typing; Esc cancels.
    reduce(&mut s, ch('T'));
    assert!(reduce(&mut s, ch('q')).is_empty());
    assert!(!s.should_quit);
    reduce(&mut s, code(KeyCode::Esc));
    assert_eq!(s.overlay, None);
}

#[test]
fn alpha_steps_and_clamps() {
    let mut s = running(Screen::Dashboard);
    assert_eq!(
        reduce(&mut s, ch('a')),
        vec![Effect::Control(Control::SetAlpha(0.4))]
    );
    assert_eq!(
        reduce(&mut s, ch('A')),
        vec![Effect::Control(Control::SetAlpha(0.5))]
    );
    s.run.as_mut().unwrap().requested_alpha = Some(0.95);
    assert_eq!(
        reduce(&mut s, ch('A')),
        vec![Effect::Control(Control::SetAlpha(1.0))]
    );
    s.run.as_mut().unwrap().requested_alpha = Some(0.05);
    assert_eq!(
        reduce(&mut s, ch('a')),
        vec![Effect::Control(Control::SetAlpha(0.0))]
    );
}

#[test]
fn stop_and_quit_ask_first_while_running() {
    let mut s = running(Screen::Dashboard);
    assert!(reduce(&mut s, ch('s')).is_empty());
    assert_eq!(s.overlay, Some(Overlay::Confirm(ConfirmKind::Stop)));
    assert!(reduce(&mut s, ch('n')).is_empty());
    reduce(&mut s, ch('s'));
    assert_eq!(
        reduce(&mut s, ch('y')),
        vec![Effect::Control(Control::Stop)]
    );
    assert!(!s.quit_after_stop && !s.should_quit);

    let mut s = running(Screen::Dashboard);
    assert!(reduce(&mut s, ch('q')).is_empty());
    assert_eq!(s.overlay, Some(Overlay::Confirm(ConfirmKind::Quit)));
    assert!(reduce(&mut s, code(KeyCode::Esc)).is_empty());
    assert!(!s.should_quit);
    reduce(&mut s, ch('q'));
    assert_eq!(
        reduce(&mut s, code(KeyCode::Enter)),
        vec![Effect::Control(Control::Stop)]
    );
    assert!(
        s.quit_after_stop && !s.should_quit,
        "waits for the trainer to stop"
    );

    let mut s = state_with_run(&scripted_run(true), Screen::Dashboard);
    reduce(&mut s, ch('q'));
    assert!(s.should_quit, "a finished run quits without asking");
}

#[test]
fn ctrl_c_stops_gracefully_then_forces() {
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    let mut s = running(Screen::Dashboard);
    s.overlay = Some(Overlay::TemperaturePrompt {
        buffer: String::new(),
        error: None,
    });
    assert_eq!(reduce(&mut s, ctrl_c), vec![Effect::Control(Control::Stop)]);
    assert!(s.quit_after_stop && !s.should_quit);
    assert!(reduce(&mut s, ctrl_c).is_empty());
    assert!(s.should_quit, "second Ctrl-C leaves at once");
}

#[test]
fn screens_cycle_and_help_opens() {
    let mut s = AppState::new(super::fixtures::menu(), Theme::default());
    reduce(&mut s, code(KeyCode::Tab));
    assert_eq!(s.screen, Screen::Dashboard);
    reduce(&mut s, code(KeyCode::Tab));
    assert_eq!(s.screen, Screen::Comparison);
    reduce(&mut s, code(KeyCode::Tab));
    assert_eq!(s.screen, Screen::Menu);
    reduce(&mut s, KeyEvent::new(KeyCode::BackTab, KeyModifiers::SHIFT));
    assert_eq!(s.screen, Screen::Comparison);
    reduce(&mut s, ch('?'));
    assert_eq!(s.overlay, Some(Overlay::Help));
    reduce(&mut s, ch('?'));
    assert_eq!(s.overlay, None);
}

#[test]
fn menu_moves_switches_and_starts() {
    let mut s = with_past_runs(AppState::new(super::fixtures::menu(), Theme::default()));
    reduce(&mut s, code(KeyCode::Down));
    reduce(&mut s, code(KeyCode::Down));
    assert_eq!(s.menu.preset_sel, 2);
    reduce(&mut s, code(KeyCode::Up));
    assert_eq!(s.menu.preset_sel, 1);
    assert_eq!(
        reduce(&mut s, code(KeyCode::Enter)),
        vec![Effect::StartPreset(1)]
    );
    reduce(&mut s, code(KeyCode::Right));
    assert_eq!(s.menu.focus, MenuFocus::Runs);
    reduce(&mut s, code(KeyCode::Down));
    assert_eq!(
        reduce(&mut s, code(KeyCode::Enter)),
        vec![Effect::OpenRun(1)]
    );
    reduce(&mut s, code(KeyCode::Left));
    assert_eq!(s.menu.focus, MenuFocus::Presets);

    // One run at a time.
    let mut s = running(Screen::Menu);
    assert!(reduce(&mut s, code(KeyCode::Enter)).is_empty());
    assert!(s.flash.as_deref().unwrap_or("").contains("stop it first"));
}

#[test]
fn view_toggles_and_log_scroll() {
    let mut s = running(Screen::Dashboard);
    assert!(s.ema);
    reduce(&mut s, ch('e'));
    assert!(!s.ema);
    reduce(&mut s, ch('v'));
    assert!(s.show_test);
    reduce(&mut s, code(KeyCode::Up));
    reduce(&mut s, code(KeyCode::Up));
    assert_eq!(s.log_scroll, 2);
    reduce(&mut s, code(KeyCode::Down));
    assert_eq!(s.log_scroll, 1);
    reduce(&mut s, code(KeyCode::Esc));
    assert_eq!(s.screen, Screen::Menu);
}

#[test]
fn controls_without_a_run_explain_instead_of_sending() {
    let mut s = AppState::new(super::fixtures::menu(), Theme::default());
    s.screen = Screen::Dashboard;
    for c in ['p', '+', '-', 'a', 'A', 's', 'T'] {
        assert!(reduce(&mut s, ch(c)).is_empty(), "{c}");
        assert_eq!(s.flash.as_deref(), Some("no run is going"), "{c}");
        assert_eq!(s.overlay, None);
    }
}

#[test]
fn hint_bar_comes_from_the_binding_table() {
    let s = running(Screen::Dashboard);
    let hints = super::keys::hints(&s);
    assert_eq!(
        hints.first(),
        Some(&("p/space", "pause")),
        "run controls come first"
    );
    for (label, hint) in &hints {
        assert!(
            BINDINGS
                .iter()
                .any(|b| b.label == *label && b.hint == Some(*hint)),
            "{label}"
        );
    }
}

fn menu_with_two_runs() -> AppState {
    let mut s = AppState::new(super::fixtures::menu(), Theme::default());
    s.menu.runs = vec![
        past_run("20260101-000512-quick", 0.0111, 2.0),
        past_run("20260101-000000-quick", 0.0, 1.0),
    ];
    s
}

#[test]
fn marking_runs_and_opening_their_comparison() {
    let mut s = menu_with_two_runs();
    // Marks belong to the past-runs list.
    assert!(reduce(&mut s, ch('m')).is_empty());
    assert!(s.menu.marked.is_empty());
    assert!(s.flash.as_deref().unwrap().contains("past runs"));
    reduce(&mut s, code(KeyCode::Right));
    assert_eq!(s.menu.focus, MenuFocus::Runs);
    reduce(&mut s, ch('m'));
    assert_eq!(s.menu.marked, vec!["20260101-000512-quick".to_string()]);
    // One marked run: c explains, Enter opens the highlighted run.
    reduce(&mut s, ch('c'));
    assert!(s.flash.as_deref().unwrap().contains("two or more"));
    assert!(s.compare.is_none());
    reduce(&mut s, code(KeyCode::Down));
    assert_eq!(
        reduce(&mut s, code(KeyCode::Enter)),
        vec![Effect::OpenRun(1)]
    );
    // Space marks too, and toggles.
    reduce(&mut s, ch(' '));
    reduce(&mut s, ch(' '));
    assert_eq!(s.menu.marked.len(), 1);
    reduce(&mut s, ch(' '));
    assert_eq!(s.menu.marked.len(), 2);
    assert!(reduce(&mut s, code(KeyCode::Enter)).is_empty());
    assert_eq!(s.screen, Screen::Comparison);
    let cmp = s.compare.as_ref().expect("comparison open");
    let labels: Vec<&str> = cmp.runs.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(
        labels,
        vec!["000512-quick", "000000-quick"],
        "marking order"
    );
    // The hint bar offers to close it; Esc does.
    assert!(super::keys::hints(&s).contains(&("Esc", "close")));
    reduce(&mut s, code(KeyCode::Esc));
    assert!(s.compare.is_none());
    assert_eq!(s.screen, Screen::Menu);
    // c opens it again from the menu.
    reduce(&mut s, ch('c'));
    assert!(s.compare.is_some());
    assert_eq!(s.screen, Screen::Comparison);
}

#[test]
fn menu_hints_offer_marking_and_comparing() {
    let s = menu_with_two_runs();
    let hints = super::keys::hints(&s);
    assert!(hints.contains(&("m/space", "mark")), "{hints:?}");
    assert!(hints.contains(&("c", "compare")), "{hints:?}");
}

#[test]
fn a_watcher_quits_without_asking_and_ctrl_c_sends_nothing() {
    let mut s = watch_state(&scripted_run(false), true);
    assert!(s.live_running());
    assert!(reduce(&mut s, ch('q')).is_empty());
    assert!(s.should_quit && s.overlay.is_none());

    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    let mut s = watch_state(&scripted_run(false), true);
    assert!(reduce(&mut s, ctrl_c).is_empty());
    assert!(s.should_quit && !s.quit_after_stop);
}

#[test]
fn a_watcher_controls_the_run_like_a_local_one_while_its_writer_lives() {
    let mut s = watch_state(&scripted_run(false), true);
    assert_eq!(
        reduce(&mut s, ch('p')),
        vec![Effect::Control(Control::Pause)]
    );
    assert_eq!(
        reduce(&mut s, ch('+')),
        vec![Effect::Control(Control::SetTemperature(4.5))]
    );
    reduce(&mut s, ch('s'));
    assert_eq!(s.overlay, Some(Overlay::Confirm(ConfirmKind::Stop)));
    assert_eq!(
        reduce(&mut s, ch('y')),
        vec![Effect::Control(Control::Stop)]
    );
    assert!(!s.should_quit, "stopping does not detach");

    // The writer is gone: every control says why instead of sending.
    let mut s = watch_state(&scripted_run(false), false);
    for c in ['p', '+', '-', 'a', 'A', 's', 'T'] {
        assert!(reduce(&mut s, ch(c)).is_empty(), "{c}");
        assert_eq!(s.flash.as_deref(), Some(WATCH_STALLED), "{c}");
        assert_eq!(s.overlay, None);
    }
    // A pending stop question goes when the writer does.
    let mut s = watch_state(&scripted_run(false), true);
    reduce(&mut s, ch('s'));
    s.set_writer_live(false, std::time::Instant::now());
    assert_eq!(s.overlay, None);
}
