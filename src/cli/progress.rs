//! Renders a request's live [`Event`]s while it runs: progress on stderr, followed log lines on
//! stdout.
//!
//! On a terminal (stderr is a TTY) a step's start is a line, and under it a spinner with its
//! elapsed time and what it waits on (a health check's last answer), replaced by the step's end
//! line with its duration. Elsewhere (CI, a pipe, a file) every event is one plain line: a step's start, each
//! change of what it waits on, its end with its duration. Under `--log-format json` each event
//! is a JSON log line instead (the same shape as codeb's log lines, the event under `fields`), so
//! that stderr stays JSON. stdout carries only the command's answer, so `-o json` stays pure
//! data; `--progress none` prints no progress at all.
//!
//! Must not: decide anything, or write to stdout anything but log lines.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::sync::mpsc;

use super::Format;
use crate::reconcile::Event;

/// `--progress`: how progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// A spinner when stderr is a terminal, plain lines otherwise.
    Auto,
    /// One plain line per event, even on a terminal.
    Plain,
    /// No progress (the answer is printed as ever).
    None,
}

/// How progress is shown: `--progress`, and whether stderr carries JSON log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub choice: Choice,
    pub json: bool,
}

/// How this run renders progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Spinner,
    Plain,
    Json,
    Off,
}

/// How rendering ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every event was rendered.
    Drained,
    /// stdout was closed (a pipe's reader exited): the caller ends quietly, exit 0.
    StdoutClosed,
}

/// Renders `events` until every sender is gone (or stdout closes), log lines in `format`.
pub async fn render(mut events: mpsc::Receiver<Event>, style: Style, format: Format) -> End {
    let mode = match style.choice {
        Choice::None => Mode::Off,
        _ if style.json => Mode::Json,
        Choice::Plain => Mode::Plain,
        Choice::Auto if std::io::stderr().is_terminal() => Mode::Spinner,
        Choice::Auto => Mode::Plain,
    };
    let mut spinner: Option<indicatif::ProgressBar> = None;
    while let Some(event) = events.recv().await {
        if let Event::Log { line } = &event {
            if log_line(line, format).is_err() {
                return End::StdoutClosed;
            }
            continue;
        }
        match mode {
            Mode::Off => {}
            Mode::Plain => {
                // A closed stderr is no reason to stop the request.
                let _ = writeln!(std::io::stderr().lock(), "{}", plain(&event));
            }
            Mode::Json => {
                let _ = writeln!(std::io::stderr().lock(), "{}", json_line(&event));
            }
            Mode::Spinner => spin(&mut spinner, &event),
        }
    }
    if let Some(bar) = spinner.take() {
        bar.finish_and_clear();
    }
    End::Drained
}

/// A note on stderr after the request, as progress is shown (none with `--progress none`).
pub fn note(style: Style, message: &str) {
    let event = Event::Note {
        message: message.to_string(),
    };
    let line = match style {
        Style {
            choice: Choice::None,
            ..
        } => return,
        Style { json: true, .. } => json_line(&event),
        _ => format!("· {message}"),
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// One log line on stdout, flushed (a follow's reader sees it at once).
fn log_line(line: &str, format: Format) -> std::io::Result<()> {
    let text = match format {
        Format::Table => format!("{line}\n"),
        Format::Json => format!("{}\n", serde_json::json!({ "line": line })),
        Format::Yaml => format!(
            "- {}\n",
            serde_json::to_string(line).expect("strings serialize")
        ),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// An event as one plain line.
fn plain(event: &Event) -> String {
    match event {
        Event::StepStarted { step } => format!("→ {step}"),
        Event::StepEnded {
            step,
            duration_ms,
            error: None,
        } => format!("✓ {step} ({})", seconds(*duration_ms)),
        Event::StepEnded {
            step,
            duration_ms,
            error: Some(e),
        } => format!("✗ {step} ({}): {e}", seconds(*duration_ms)),
        Event::Waiting {
            state, elapsed_ms, ..
        } => format!("  … {state} (after {})", seconds(*elapsed_ms)),
        Event::Note { message } => format!("! {message}"),
        Event::Log { line } => line.clone(),
    }
}

/// An event as a JSON log line: codeb's log line shape (`timestamp`, `level`, `fields`, `target`),
/// with the plain line as `message` and the event itself beside it.
fn json_line(event: &Event) -> String {
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    serde_json::json!({
        "timestamp": now,
        "level": "INFO",
        "fields": { "message": plain(event), "progress": event },
        "target": "codeb::progress",
    })
    .to_string()
}

/// `0.31 s`, `8.2 s`, `95 s`.
fn seconds(ms: u64) -> String {
    let s = Duration::from_millis(ms).as_secs_f64();
    if s < 1.0 {
        format!("{s:.2} s")
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

/// The spinner of the step in progress: the step's start is a line of its own (its whole text),
/// under it a spinner with the elapsed time and what the step waits on, replaced by the step's end
/// line.
fn spin(spinner: &mut Option<indicatif::ProgressBar>, event: &Event) {
    let line = |text: String| {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    };
    match event {
        Event::StepStarted { .. } => {
            if let Some(bar) = spinner.take() {
                bar.finish_and_clear();
            }
            line(plain(event));
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template("  {spinner} {elapsed:>3} {wide_msg}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            *spinner = Some(bar);
        }
        Event::Waiting { state, .. } => {
            if let Some(bar) = spinner.as_ref() {
                bar.set_message(state.clone());
            }
        }
        Event::StepEnded { .. } | Event::Note { .. } => {
            if let Some(bar) = spinner.take() {
                bar.finish_and_clear();
            }
            line(plain(event));
        }
        Event::Log { .. } => unreachable!("log lines go to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_json_logs_an_event_is_a_json_log_line_with_the_event_beside_its_message() {
        let event = Event::Waiting {
            step: "s".into(),
            state: "HTTP 404".into(),
            elapsed_ms: 3_000,
        };
        let line: serde_json::Value = serde_json::from_str(&json_line(&event)).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["message"], "  … HTTP 404 (after 3.0 s)");
        assert_eq!(
            serde_json::from_value::<Event>(line["fields"]["progress"].clone()).unwrap(),
            event
        );
    }

    #[test]
    fn plain_lines_say_what_started_what_it_waits_on_and_how_long_it_took() {
        let step = "app/production: await blue healthy".to_string();
        let lines: Vec<String> = [
            Event::StepStarted { step: step.clone() },
            Event::Waiting {
                step: step.clone(),
                state: "connection refused".into(),
                elapsed_ms: 10,
            },
            Event::StepEnded {
                step: step.clone(),
                duration_ms: 8_200,
                error: None,
            },
            Event::StepEnded {
                step,
                duration_ms: 61_000,
                error: Some("blue never answered".into()),
            },
        ]
        .iter()
        .map(plain)
        .collect();
        assert_eq!(
            lines,
            [
                "→ app/production: await blue healthy",
                "  … connection refused (after 0.01 s)",
                "✓ app/production: await blue healthy (8.2 s)",
                "✗ app/production: await blue healthy (61 s): blue never answered",
            ]
        );
    }
}
