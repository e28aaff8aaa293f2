//! The one owner of the terminal: status lines on stderr (colored verbs on a TTY, plain
//! lines otherwise), results on stdout, JSON when asked, and progress bars on a TTY.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{ColorChoice, GlobalArgs};
use crate::safe_text::{escape_controls, escape_json_text};

/// A result line for [`Printer::out`]: plain text, escaped when printed, or text the
/// printer styled itself (escaped before its colours were added).
pub enum OutText {
    Plain(String),
    Styled(Styled),
}

/// Text escaped and coloured by the printer ([`Printer::paint_diff_line`],
/// [`Printer::bold`]); only the printer makes one.
pub struct Styled(String);

impl From<String> for OutText {
    fn from(s: String) -> OutText {
        OutText::Plain(s)
    }
}

impl From<&str> for OutText {
    fn from(s: &str) -> OutText {
        OutText::Plain(s.to_string())
    }
}

impl From<&String> for OutText {
    fn from(s: &String) -> OutText {
        OutText::Plain(s.clone())
    }
}

impl From<Styled> for OutText {
    fn from(s: Styled) -> OutText {
        OutText::Styled(s)
    }
}

/// How a run reports to the user.
pub struct Printer {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
    pub color: bool,
    /// stderr is a terminal: progress bars are drawn.
    pub tty: bool,
    multi: MultiProgress,
    bars: Mutex<std::collections::HashMap<String, ProgressBar>>,
    lock: Mutex<()>,
    /// A JSON document or line went to stdout (an error then adds none of its own).
    json_out: std::sync::atomic::AtomicBool,
}

const GREEN: &str = "\x1b[1;32m";
const YELLOW: &str = "\x1b[1;33m";
const RED: &str = "\x1b[1;31m";
const CYAN: &str = "\x1b[36m";
const RESET: &str = "\x1b[0m";

impl Printer {
    pub fn new(g: &GlobalArgs) -> Printer {
        let tty = std::io::stderr().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = !no_color
            && match g.color {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => tty,
            };
        let multi = MultiProgress::new();
        if !tty || g.quiet || g.json {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        Printer {
            json: g.json,
            quiet: g.quiet,
            verbose: g.verbose,
            color,
            tty,
            multi,
            bars: Mutex::new(std::collections::HashMap::new()),
            lock: Mutex::new(()),
            json_out: Default::default(),
        }
    }

    /// A printer for tests and library use: plain, quiet.
    pub fn plain() -> Printer {
        Printer::new(&GlobalArgs {
            json: false,
            quiet: true,
            verbose: 0,
            color: ColorChoice::Never,
        })
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("{code}{s}{RESET}")
        } else {
            s.to_string()
        }
    }

    fn line(&self, code: &str, verb: &str, msg: &str) {
        let verb = format!("{verb:>12}");
        let text = format!("{} {}", self.paint(code, &verb), escape_controls(msg));
        let _g = self.lock.lock();
        // Printing through MultiProgress keeps bars intact on a TTY.
        if self.multi.is_hidden() {
            eprintln!("{text}");
        } else {
            let _ = self.multi.println(text);
        }
    }

    /// A step that is happening: `   Rendering lb-01`.
    pub fn status(&self, verb: &str, msg: impl AsRef<str>) {
        if !self.quiet && !self.json {
            self.line(GREEN, verb, msg.as_ref());
        }
    }

    pub fn warn(&self, msg: impl AsRef<str>) {
        if !self.json {
            self.line(YELLOW, "warning", msg.as_ref());
        }
    }

    /// Shown with -v: each remote command and other details.
    pub fn detail(&self, verb: &str, msg: impl AsRef<str>) {
        if self.verbose > 0 {
            self.line(CYAN, verb, msg.as_ref());
        }
    }

    pub fn error(&self, msg: impl AsRef<str>) {
        let _g = self.lock.lock();
        eprintln!(
            "{} {}",
            self.paint(RED, "error:"),
            escape_controls(msg.as_ref())
        );
    }

    /// A result line on stdout (tables, diffs), control characters escaped.
    pub fn out(&self, text: impl Into<OutText>) {
        let text = match text.into() {
            OutText::Plain(s) => escape_controls(&s).into_owned(),
            OutText::Styled(Styled(s)) => s,
        };
        let _g = self.lock.lock();
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{text}");
    }

    /// A JSON document (or one JSON Lines record) on stdout.
    pub fn json_line(&self, value: &serde_json::Value) {
        self.json_out
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _g = self.lock.lock();
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", escape_json_text(&value.to_string()));
        let _ = stdout.flush();
    }

    /// The error that ended the command, with --json: `{"schema": 1, "error": {"kind",
    /// "host", "message"}}` on stdout, unless the command printed its own document (it
    /// carries the error) or events (the summary carries it).
    pub fn json_error(&self, e: &anyhow::Error) {
        if self.json && !self.json_out.load(std::sync::atomic::Ordering::Relaxed) {
            self.json_line(&serde_json::json!({"schema": 1, "error": crate::error::to_json(e)}));
        }
    }

    /// One JSON Lines event of a running apply (only with --json).
    pub fn event(&self, mut value: serde_json::Value) {
        if self.json {
            value["schema"] = serde_json::json!(1);
            self.json_line(&value);
        }
    }

    /// A diff line for [`Printer::out`]: escaped, then coloured on a colour terminal.
    pub fn paint_diff_line(&self, line: &str) -> Styled {
        let line = escape_controls(line);
        if !self.color {
            return Styled(line.into_owned());
        }
        Styled(match line.chars().next() {
            Some('+') if !line.starts_with("+++") => self.paint("\x1b[32m", &line),
            Some('-') if !line.starts_with("---") => self.paint("\x1b[31m", &line),
            Some('@') => self.paint(CYAN, &line),
            _ => line.into_owned(),
        })
    }

    /// A heading for [`Printer::out`]: escaped, then bold on a colour terminal.
    pub fn bold(&self, s: &str) -> Styled {
        Styled(self.paint("\x1b[1m", &escape_controls(s)))
    }

    /// What a host is doing now: a spinner line per host on a TTY, a `-v` line otherwise.
    pub fn host_step(&self, host: &str, msg: &str) {
        if self.multi.is_hidden() {
            self.detail("Progress", format!("{host}: {msg}"));
            return;
        }
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bars
            .entry(host.to_string())
            .or_insert_with(|| self.host_bar(host));
        bar.set_message(escape_controls(msg).into_owned());
    }

    /// Ends a host's spinner (its last word stays on screen).
    pub fn host_done(&self, host: &str, msg: &str) {
        let bar = self
            .bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(host);
        if let Some(bar) = bar {
            bar.finish_with_message(escape_controls(msg).into_owned());
        }
    }

    /// Ends every spinner still running (end of a command).
    pub fn finish_all(&self) {
        let bars: Vec<_> = self
            .bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, bar) in bars {
            bar.finish();
        }
    }

    /// A spinner for one host, drawn only on a TTY.
    fn host_bar(&self, host: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:>12} {wide_msg} {elapsed:>4}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(escape_controls(host).into_owned());
        if !self.multi.is_hidden() {
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
        }
        bar
    }
}
