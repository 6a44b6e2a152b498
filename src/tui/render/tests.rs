//! Rendering tests: scripted events through `TestBackend` at 80x24 and 120x40.

use selfdistill::train::events::{Control, Method, TrainEvent};

use crate::tui::fixtures::{
    key, past_run, render_text, screen_contains, scripted_run, state_with_run, watch_state,
};
use crate::tui::keys::BINDINGS;
use crate::tui::state::{AppState, Overlay, Screen};
use crate::tui::theme::Theme;

const SIZES: [(u16, u16); 2] = [(80, 24), (120, 40)];

fn dump(lines: &[String]) -> String {
    lines.join("\n")
}

#[test]
fn menu_lists_presets_with_details_at_both_sizes() {
    for (w, h) in SIZES {
        let state = AppState::new(crate::tui::fixtures::menu(), Theme::default());
        let lines = render_text(&state, w, h);
        let text = dump(&lines);
        for needle in [
            "Presets",
            "quick",
            "cifar10-resnet20",
            "Past runs",
            "dataset",
            "model",
            "methods",
            "generations",
        ] {
            assert!(text.contains(needle), "{w}x{h}: no {needle:?}\n{text}");
        }
        for needle in [
            "T / alpha",
            "backend",
            "size",
            "baseline, conventional, self",
        ] {
            assert!(text.contains(needle), "{w}x{h}: no {needle:?}\n{text}");
        }
        assert!(text.contains("? help"), "hint bar\n{text}");
    }
}

#[test]
fn dashboard_legend_names_teacher_replacements_and_control_markers() {
    for (w, h) in SIZES {
        let state = state_with_run(&scripted_run(false), Screen::Dashboard);
        let lines = render_text(&state, w, h);
        let text = dump(&lines);
        assert!(
            text.contains("teacher ← self"),
            "{w}x{h}: legend lacks the teacher series\n{text}"
        );
        assert!(
            text.contains("T change"),
            "{w}x{h}: legend lacks T change\n{text}"
        );
        assert!(text.contains("pause"), "{w}x{h}\n{text}");
        assert!(
            text.contains("generation"),
            "{w}x{h}: generation boundary in legend\n{text}"
        );
        assert!(
            text.contains("self g2/2 s1"),
            "{w}x{h}: headline names the job\n{text}"
        );
        assert!(text.contains("step 15/30"), "{w}x{h}\n{text}");
        assert!(text.contains("ETA"), "{w}x{h}\n{text}");
        assert!(
            text.contains("Validation accuracy") && text.contains("Train loss (EMA"),
            "{text}"
        );
        assert!(text.contains("Events"), "{text}");
        assert!(
            !text.contains("PAUSED"),
            "resumed run shows no badge\n{text}"
        );
        for m in [Method::Baseline, Method::Conventional, Method::SelfDistill] {
            assert!(text.contains(m.name()), "{w}x{h}: legend lacks {m}\n{text}");
        }
        // The teacher markers are drawn in their own colour.
        let teacher_style = state.theme.teacher();
        let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h)).unwrap();
        term.draw(|f| super::draw(f, &state)).unwrap();
        let buf = term.backend().buffer();
        let marked = (0..w)
            .flat_map(|x| (0..h).map(move |y| (x, y)))
            .any(|(x, y)| {
                let c = &buf[(x, y)];
                c.symbol() == "█" && c.fg == teacher_style.fg.unwrap()
            });
        assert!(marked, "{w}x{h}: no teacher marker cell\n{text}");
    }
}

#[test]
fn dashboard_shows_paused_badge_and_new_temperature() {
    let mut events = scripted_run(false);
    let k = key(Method::SelfDistill, 2);
    events.push(TrainEvent::ControlApplied {
        key: k,
        step: 16,
        control: Control::Pause,
    });
    events.push(TrainEvent::ControlApplied {
        key: k,
        step: 16,
        control: Control::SetTemperature(7.5),
    });
    for (w, h) in SIZES {
        let state = state_with_run(&events, Screen::Dashboard);
        let text = dump(&render_text(&state, w, h));
        assert!(text.contains("PAUSED"), "{w}x{h}\n{text}");
        assert!(text.contains("T 7.5"), "{w}x{h}\n{text}");
        assert!(
            text.contains("T=7.5 from step 16"),
            "{w}x{h}: log line\n{text}"
        );
    }
}

#[test]
fn comparison_table_shows_the_numbers_it_was_fed() {
    for (w, h) in SIZES {
        let state = state_with_run(&scripted_run(true), Screen::Comparison);
        let text = dump(&render_text(&state, w, h));
        for needle in [
            "73.45%", "72.11%", "76.88%", "76.01%", "75.12%", "14.0s", "27.0s", "23.0s", "3.0",
        ] {
            assert!(text.contains(needle), "{w}x{h}: no {needle:?}\n{text}");
        }
        assert!(
            text.contains("First to reach conventional's best (73.45%): self g1 at 0:13"),
            "{w}x{h}: first-to-reach line\n{text}"
        );
        assert!(text.contains("cumulative wall time"), "{text}");
        assert!(text.contains("conv. best"), "{w}x{h}: chart legend\n{text}");
    }
}

#[test]
fn help_lists_every_binding_at_both_sizes() {
    for (w, h) in SIZES {
        let mut state = AppState::new(crate::tui::fixtures::menu(), Theme::default());
        state.overlay = Some(Overlay::Help);
        let lines = render_text(&state, w, h);
        let text = dump(&lines);
        for b in BINDINGS {
            let found = lines
                .iter()
                .any(|l| l.contains(b.label) && l.contains(b.description));
            assert!(
                found,
                "{w}x{h}: help lacks {} {}\n{text}",
                b.label, b.description
            );
        }
    }
}

#[test]
fn too_small_terminal_gets_a_clear_screen() {
    let state = state_with_run(&scripted_run(false), Screen::Dashboard);
    for (w, h) in [(79, 24), (80, 23), (40, 10)] {
        let text = dump(&render_text(&state, w, h));
        assert!(text.contains("Terminal too small"), "{w}x{h}\n{text}");
        assert!(
            !text.contains("Validation"),
            "nothing else is drawn\n{text}"
        );
    }
    let text = dump(&render_text(&state, 80, 24));
    assert!(!text.contains("too small"));
}

#[test]
fn trainer_error_shows_an_error_screen_with_the_message() {
    let mut events = scripted_run(false);
    events.push(TrainEvent::Error {
        message: "loss became NaN at step 16".into(),
    });
    for (w, h) in SIZES {
        let state = state_with_run(&events, Screen::Dashboard);
        let text = dump(&render_text(&state, w, h));
        assert!(
            text.contains("Training failed: loss became NaN at step 16"),
            "{w}x{h}\n{text}"
        );
    }
}

#[test]
fn prompt_and_confirm_overlays_render() {
    let mut state = state_with_run(&scripted_run(false), Screen::Dashboard);
    state.overlay = Some(Overlay::TemperaturePrompt {
        buffer: "2.5".into(),
        error: Some("enter a number".into()),
    });
    let text = dump(&render_text(&state, 80, 24));
    assert!(
        text.contains("> 2.5") && text.contains("enter a number") && text.contains("Enter apply"),
        "{text}"
    );
    state.overlay = Some(Overlay::Confirm(crate::tui::state::ConfirmKind::Quit));
    let text = dump(&render_text(&state, 80, 24));
    assert!(
        text.contains("Stop it and quit?") && text.contains("y yes"),
        "{text}"
    );
}

#[test]
fn no_color_theme_draws_without_colours() {
    let mut state = state_with_run(&scripted_run(true), Screen::Dashboard);
    state.theme = Theme {
        color: false,
        ..Theme::default()
    };
    for screen in [Screen::Menu, Screen::Dashboard, Screen::Comparison] {
        state.screen = screen;
        let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(120, 40)).unwrap();
        term.draw(|f| super::draw(f, &state)).unwrap();
        let buf = term.backend().buffer();
        for cell in buf.content() {
            assert_eq!(
                cell.fg,
                ratatui::style::Color::Reset,
                "{screen:?}: coloured cell {cell:?}"
            );
            assert_eq!(
                cell.bg,
                ratatui::style::Color::Reset,
                "{screen:?}: coloured cell {cell:?}"
            );
        }
    }
}

#[test]
fn past_run_view_and_empty_screens_render() {
    let events = scripted_run(true);
    let mut state = AppState::new(crate::tui::fixtures::menu(), Theme::default());
    state.screen = Screen::Dashboard;
    let text = dump(&render_text(&state, 80, 24));
    assert!(text.contains("No run yet"), "{text}");
    state.past = Some(crate::tui::state::RunView::from_events(
        "old",
        &events,
        std::time::Instant::now(),
    ));
    let text = dump(&render_text(&state, 80, 24));
    assert!(
        text.contains("[past run]") && text.contains("FINISHED") && text.contains("1:00"),
        "{text}"
    );
    assert!(screen_contains(
        &render_text(&state, 120, 40),
        "teacher ← self"
    ));
}

#[test]
fn watch_header_names_the_run_and_its_writer() {
    for (w, h) in SIZES {
        let state = watch_state(&scripted_run(false), true);
        let text = dump(&render_text(&state, w, h));
        assert!(
            text.contains("watching 20260101-000000-quick"),
            "{w}x{h}\n{text}"
        );
        assert!(text.contains("writer: live"), "{w}x{h}\n{text}");
        assert!(text.contains("step 15/30"), "{w}x{h}\n{text}");
        assert!(!text.contains("[past run]"), "{w}x{h}\n{text}");

        let state = watch_state(&scripted_run(false), false);
        let text = dump(&render_text(&state, w, h));
        assert!(text.contains("writer: not running"), "{w}x{h}\n{text}");
        assert!(text.contains("no process writes it"), "{w}x{h}\n{text}");
        assert!(!text.contains("ETA"), "{w}x{h}: nothing will come\n{text}");

        let state = watch_state(&scripted_run(true), false);
        let text = dump(&render_text(&state, w, h));
        assert!(
            text.contains("FINISHED") && text.contains("showing what it recorded"),
            "{w}x{h}\n{text}"
        );
        let mut state = state;
        state.screen = Screen::Comparison;
        let text = dump(&render_text(&state, w, h));
        assert!(
            text.contains("watching 20260101-000000-quick") && text.contains("76.88%"),
            "{w}x{h}\n{text}"
        );
    }
}

#[test]
fn comparison_of_two_runs_shows_each_runs_numbers() {
    for (w, h) in SIZES {
        let mut state = AppState::new(crate::tui::fixtures::menu(), Theme::default());
        state.menu.runs = vec![
            past_run("20260101-000512-quick", 0.0111, 2.0),
            past_run("20260101-000000-quick", 0.0, 1.0),
        ];
        state.menu.marked = vec![
            "20260101-000000-quick".into(),
            "20260101-000512-quick".into(),
        ];
        crate::tui::keys::reduce(
            &mut state,
            crossterm::event::KeyEvent::new(
                crossterm::event::KeyCode::Char('c'),
                crossterm::event::KeyModifiers::NONE,
            ),
        );
        assert_eq!(state.screen, Screen::Comparison);
        let lines = render_text(&state, w, h);
        let text = dump(&lines);
        let row = |label: &str, method: &str, gen: &str| -> String {
            lines
                .iter()
                .find(|l| {
                    let l = l.replace('│', " ");
                    let cells: Vec<&str> = l.split_whitespace().collect();
                    cells.windows(3).any(|c| c == [label, method, gen])
                })
                .unwrap_or_else(|| panic!("{w}x{h}: no row {label} {method} {gen}\n{text}"))
                .clone()
        };
        // Run A (000000): the scripted numbers; run B (000512): +1.11 points, twice the time.
        for (label, method, gen, needles) in [
            (
                "000000-quick",
                "baseline",
                "1",
                ["70.10%", "69.50%", "3.0", "10.0s"],
            ),
            (
                "000000-quick",
                "conventional",
                "2",
                ["73.45%", "72.11%", "12.0s", "23.0s"],
            ),
            (
                "000000-quick",
                "self",
                "2",
                ["76.88%", "76.01%", "14.0s", "27.0s"],
            ),
            (
                "000512-quick",
                "baseline",
                "1",
                ["71.21%", "70.61%", "3.0", "20.0s"],
            ),
            (
                "000512-quick",
                "conventional",
                "2",
                ["74.56%", "73.22%", "24.0s", "46.0s"],
            ),
            (
                "000512-quick",
                "self",
                "2",
                ["77.99%", "77.12%", "28.0s", "54.0s"],
            ),
        ] {
            let line = row(label, method, gen);
            for n in needles {
                assert!(
                    line.contains(n),
                    "{w}x{h}: {label} {method} g{gen} lacks {n}: {line}"
                );
            }
        }
        assert!(text.contains("2 runs side by side"), "{w}x{h}\n{text}");
        assert!(
            text.contains("000000-quick self g2 76.88%")
                && text.contains("000512-quick self g2 77.99%"),
            "{w}x{h}: best line\n{text}"
        );
        assert!(text.contains("per run and method"), "{w}x{h}\n{text}");
        if h >= 40 {
            assert!(
                text.contains("000512-quick self"),
                "{w}x{h}: legend\n{text}"
            );
        }
        assert!(text.contains("Esc close"), "{w}x{h}: hint bar\n{text}");
    }
}

#[test]
fn menu_marks_runs_for_comparison() {
    let mut state = AppState::new(crate::tui::fixtures::menu(), Theme::default());
    state.menu.runs = vec![
        past_run("20260101-000512-quick", 0.0111, 2.0),
        past_run("20260101-000000-quick", 0.0, 1.0),
    ];
    state.menu.marked = vec!["20260101-000000-quick".into()];
    let text = dump(&render_text(&state, 80, 24));
    assert!(text.contains("✓ 20260101-000000-quick"), "{text}");
    assert!(text.contains("1 marked"), "{text}");
}
