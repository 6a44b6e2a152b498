//! Colours and chart markers in one place, so `NO_COLOR` and `--marker` apply everywhere.

use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use selfdistill::train::events::Method;

/// Which marker draws curve lines (`--marker`); braille needs a font that has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineMarker {
    #[default]
    Braille,
    Dot,
    Block,
}

impl LineMarker {
    pub fn marker(self) -> Marker {
        match self {
            LineMarker::Braille => Marker::Braille,
            LineMarker::Dot => Marker::Dot,
            LineMarker::Block => Marker::HalfBlock,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    pub color: bool,
    pub line: LineMarker,
}

impl Default for Theme {
    fn default() -> Self {
        Theme {
            color: true,
            line: LineMarker::Braille,
        }
    }
}

impl Theme {
    /// `NO_COLOR` set to anything non-empty turns colour off (https://no-color.org).
    pub fn from_env(line: LineMarker) -> Theme {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Theme {
            color: !no_color,
            line,
        }
    }

    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    pub fn method(&self, m: Method) -> Style {
        self.fg(match m {
            Method::Baseline => Color::Gray,
            Method::Conventional => Color::Cyan,
            Method::SelfDistill => Color::Green,
        })
    }

    /// Without colour the methods stay apart by their marker.
    pub fn method_marker(&self, m: Method) -> Marker {
        if self.color {
            return self.line.marker();
        }
        match m {
            Method::Baseline => Marker::Dot,
            Method::Conventional => self.line.marker(),
            Method::SelfDistill => Marker::HalfBlock,
        }
    }

    pub fn teacher(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }
    pub fn temperature(&self) -> Style {
        self.fg(Color::Magenta)
    }
    pub fn alpha(&self) -> Style {
        self.fg(Color::LightBlue)
    }
    pub fn pause(&self) -> Style {
        self.fg(Color::Red)
    }
    pub fn boundary(&self) -> Style {
        self.fg(Color::DarkGray)
    }
    pub fn dim(&self) -> Style {
        if self.color {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default()
        }
    }
    pub fn title(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
    pub fn key(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }
    pub fn selected(&self) -> Style {
        if self.color {
            Style::default().fg(Color::Black).bg(Color::Cyan)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }
    pub fn badge_paused(&self) -> Style {
        if self.color {
            Style::default()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        }
    }
    pub fn error(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }
    pub fn good(&self) -> Style {
        self.fg(Color::Green)
    }
    pub fn gauge(&self) -> Style {
        self.fg(Color::Cyan)
    }
}
