//! Progress output for the long admin commands: `import`, `export`, `compact`, `prune`,
//! `rooms prune` and `generate`.
//!
//! Why: at 1,000,000 messages these take 4 to 28 s (import 28 s, compact 27 s, prune 13 s,
//! export 4 s), and until now only `generate` said anything meanwhile. A person at a terminal
//! wants to see that the command is alive and when it will end; a log (cron, systemd, CI) wants
//! a few plain lines, not a bar's control characters.
//!
//! One [`Progress`] reporter per command (or phase), in one of three [`Mode`]s:
//! - [`Mode::Bar`] when standard error is a terminal: an indicatif bar with position/total,
//!   rate and time left, or a spinner with count and rate while the total is unknown.
//! - [`Mode::Lines`] otherwise: a plain line at most every [`PLAIN_EVERY`] (or
//!   `CHATD_PROGRESS_EVERY`), e.g. `import: 412,000 / 1,000,000 messages (41 %), 103,000/s,
//!   about 6 s left`, then one summary line (`import: 1,000,000 messages in 27.9 s, 35,800/s`).
//! - [`Mode::Quiet`] (`--quiet`): nothing.
//!
//! Invariants:
//! - Everything goes to standard error. Nothing here writes to standard output, so what a
//!   command prints there (tables, `--json`, an export) is byte for byte what it was without
//!   progress.
//! - The summary line is printed only by [`Progress::finish`], i.e. when the command
//!   succeeded. A reporter dropped unfinished (the command failed) clears its bar and prints
//!   nothing, so the error sentence stays the last thing on the screen.
//! - Ticking is cheap (a few atomic operations or a clock read): commands tick once per chunk
//!   or per line, never per byte, and never wait for output.
//! - Rate and time left in plain lines are averages since the reporter started (stable, and
//!   easy to check against the summary); the bar uses indicatif's own recent-rate estimate.
//! - The wording is for people, not a stable interface: scripts read standard output or
//!   `--json`.
//!
//! Commands running inside the server report [`Tick`]s through `Context::progress`; the admin
//! socket forwards them to the CLI as `{"progress": …}` frames, at most a few per second, when
//! the request asked for them (see `socket`).

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde::{Deserialize, Serialize};

/// Default interval between plain progress lines when standard error is not a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Environment variable overriding [`PLAIN_EVERY`] (`30s`, `1m`; `0s`: a line per tick).
pub const EVERY_VAR: &str = "CHATD_PROGRESS_EVERY";

/// Where and how progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An indicatif bar or spinner on the terminal that standard error is.
    Bar,
    /// Plain lines on standard error, at most one per interval, and a summary line.
    Lines {
        /// Least time between two progress lines.
        every: Duration,
    },
    /// Nothing at all.
    Quiet,
}

impl Mode {
    /// The mode for this process: nothing with `quiet`, a bar when standard error is a
    /// terminal, plain lines otherwise.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines {
                every: plain_every(),
            }
        }
    }

    /// Like [`Mode::detect`], for a command that streams its output to standard output: when
    /// that is a terminal too, progress would interleave with the output, so there is none.
    pub fn detect_streaming(quiet: bool) -> Mode {
        if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            Mode::Quiet
        } else {
            Mode::detect(quiet)
        }
    }
}

fn plain_every() -> Duration {
    std::env::var(EVERY_VAR)
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .unwrap_or(PLAIN_EVERY)
}

/// How far a command has got, as it reports it (also the payload of the admin socket's
/// `progress` frames).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Tick {
    /// Units done so far.
    pub done: u64,
    /// Units in all, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Where the command is, for people (`room 41 of 100`, `verifying the copy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A callback that receives a command's [`Tick`]s.
pub type Report<'a> = &'a dyn Fn(&Tick);

/// Shows one command's (or phase's) progress on standard error; see the module doc.
pub struct Progress {
    what: &'static str,
    unit: &'static str,
    started: Instant,
    done: Cell<u64>,
    total: Cell<Option<u64>>,
    note: RefCell<Option<String>>,
    out: Output,
}

enum Output {
    Bar(ProgressBar),
    Lines(RefCell<Throttle>),
    Quiet,
}

impl Progress {
    /// Starts reporting `what` (the command, `import`) counted in `unit` (`messages`), out of
    /// `total` if known.
    pub fn new(mode: Mode, what: &'static str, unit: &'static str, total: Option<u64>) -> Self {
        let started = Instant::now();
        let out = match mode {
            Mode::Bar => {
                let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
                bar.set_style(style(unit, total.is_some()));
                bar.set_prefix(what);
                if total.is_none() {
                    bar.enable_steady_tick(Duration::from_millis(120));
                }
                Output::Bar(bar)
            }
            Mode::Lines { every } => Output::Lines(RefCell::new(Throttle::new(started, every))),
            Mode::Quiet => Output::Quiet,
        };
        Progress {
            what,
            unit,
            started,
            done: Cell::new(0),
            total: Cell::new(total),
            note: RefCell::new(None),
            out,
        }
    }

    /// Units done so far.
    pub fn done(&self) -> u64 {
        self.done.get()
    }

    /// Sets the units done (a total smaller than that is raised to it).
    pub fn set(&self, done: u64) {
        self.done.set(done);
        if let Some(total) = self.total.get() {
            if done > total {
                self.set_total(Some(done));
            }
        }
        if let Output::Bar(bar) = &self.out {
            bar.set_position(done);
        }
        self.maybe_line();
    }

    /// Adds `n` units done.
    pub fn inc(&self, n: u64) {
        self.set(self.done.get().saturating_add(n));
    }

    /// Sets (or forgets) the total; a bar turns from spinner into bar and back accordingly.
    pub fn set_total(&self, total: Option<u64>) {
        let total = total.map(|t| t.max(self.done.get()));
        let was_known = self.total.replace(total).is_some();
        if let Output::Bar(bar) = &self.out {
            match total {
                Some(t) => bar.set_length(t),
                None => bar.unset_length(),
            }
            if was_known != total.is_some() {
                bar.set_style(style(self.unit, total.is_some()));
                if total.is_some() {
                    bar.disable_steady_tick();
                } else {
                    bar.enable_steady_tick(Duration::from_millis(120));
                }
            }
        }
    }

    /// Sets (or clears) the note shown after the figures.
    pub fn set_note(&self, note: Option<String>) {
        if let Output::Bar(bar) = &self.out {
            bar.set_message(note.as_deref().map_or(String::new(), |n| format!("; {n}")));
        }
        *self.note.borrow_mut() = note;
    }

    /// Takes a command's report: its total (when it gives one), position and note.
    pub fn apply(&self, tick: &Tick) {
        if tick.total.is_some() && tick.total != self.total.get() {
            self.set_total(tick.total);
        }
        if tick.note != *self.note.borrow() {
            self.set_note(tick.note.clone());
        }
        self.set(tick.done);
    }

    fn maybe_line(&self) {
        if let Output::Lines(throttle) = &self.out {
            let now = Instant::now();
            if throttle.borrow_mut().due(now) {
                eprintln!(
                    "{}",
                    line(
                        self.what,
                        self.unit,
                        self.done.get(),
                        self.total.get(),
                        now - self.started,
                        self.note.borrow().as_deref(),
                    )
                );
            }
        }
    }

    /// The command succeeded: clears the bar and prints the summary line (not with `--quiet`).
    pub fn finish(self) {
        let elapsed = self.started.elapsed();
        match &self.out {
            Output::Bar(bar) => bar.finish_and_clear(),
            Output::Lines(_) => {}
            Output::Quiet => return,
        }
        eprintln!(
            "{}",
            summary(self.what, self.unit, self.done.get(), elapsed)
        );
    }

    /// A preparatory phase ended: clears the bar, no summary line.
    pub fn finish_quietly(self) {
        if let Output::Bar(bar) = &self.out {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // Unfinished (the command failed, or a phase ended): leave no bar behind.
        if let Output::Bar(bar) = &self.out {
            if !bar.is_finished() {
                bar.finish_and_clear();
            }
        }
    }
}

/// The indicatif style: a bar with position/total, percentage, rate and time left, or a
/// spinner with count and rate. Rate and time left use the same wording as the plain lines.
fn style(unit: &str, known_total: bool) -> ProgressStyle {
    let template = if known_total {
        format!(
            "{{prefix}}: [{{wide_bar}}] {{human_pos}}/{{human_len}} {unit} ({{percent}} %), {{rate}}{{left}}{{msg}}"
        )
    } else {
        format!("{{spinner}} {{prefix}}: {{human_pos}} {unit}, {{rate}}{{msg}}")
    };
    ProgressStyle::with_template(&template)
        .expect("a valid progress template")
        .progress_chars("=> ")
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let rate = state.per_sec();
                if rate.is_finite() && rate > 0.0 {
                    let _ = write!(w, "{}/s", format_rate(rate));
                } else {
                    let _ = write!(w, "…/s");
                }
            },
        )
        .with_key(
            "left",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let eta = state.eta();
                if !eta.is_zero() {
                    let _ = write!(w, ", about {} left", format_left(eta));
                }
            },
        )
}

/// Decides when the next plain line is due: not before `every` has passed since the start or
/// since the previous line.
#[derive(Debug, Clone)]
pub struct Throttle {
    every: Duration,
    last: Instant,
}

impl Throttle {
    /// A throttle whose first line is due `every` after `start`.
    pub fn new(start: Instant, every: Duration) -> Throttle {
        Throttle { every, last: start }
    }

    /// Whether a line is due at `now`; if so, the next one is due `every` later.
    pub fn due(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.last) >= self.every {
            self.last = now;
            true
        } else {
            false
        }
    }
}

/// Units per second, if anything was done in a measurable time.
pub fn rate(done: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    (done > 0 && secs >= 0.001).then(|| done as f64 / secs)
}

/// Time left to reach `total` at `rate` units per second; `None` when done or unknown.
pub fn time_left(done: u64, total: u64, rate: f64) -> Option<Duration> {
    if done >= total || !rate.is_finite() || rate <= 0.0 {
        return None;
    }
    Duration::try_from_secs_f64((total - done) as f64 / rate).ok()
}

/// Whole percent of `total` done, rounded down, at most 100 (an empty total is complete).
pub fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    (u128::from(done) * 100 / u128::from(total)).min(100) as u64
}

/// `1234567` → `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate for people: three significant digits, grouped (`103,000`, `35,800`, `512`),
/// one decimal below 10 (`2.5`).
pub fn format_rate(per_sec: f64) -> String {
    if per_sec < 9.95 {
        return format!("{per_sec:.1}");
    }
    let n = per_sec.round() as u64;
    let digits = n.checked_ilog10().unwrap_or(0) + 1;
    let scale = 10u64.pow(digits.saturating_sub(3));
    group((n + scale / 2) / scale * scale)
}

/// A duration for people: `12 ms`, `0.4 s`, `27.9 s`, `4 min 10 s`, `1 h 5 min`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 0.0995 {
        return format!("{} ms", (secs * 1000.0).round());
    }
    if secs < 59.95 {
        return format!("{secs:.1} s");
    }
    let whole = secs.round() as u64;
    if whole < 3600 {
        format!("{} min {} s", whole / 60, whole % 60)
    } else {
        format!("{} h {} min", whole / 3600, (whole % 3600) / 60)
    }
}

/// Time left for people: whole seconds rounded up (`6 s`), then minutes and hours.
fn format_left(d: Duration) -> String {
    let secs = d.as_secs_f64().ceil() as u64;
    if secs < 60 {
        format!("{secs} s")
    } else {
        format_duration(Duration::from_secs(secs))
    }
}

/// One plain progress line: `import: 412,000 / 1,000,000 messages (41 %), 103,000/s, about
/// 6 s left`, or without a total `prune: 412,000 messages, 31,000/s`, then `; NOTE` if any.
pub fn line(
    what: &str,
    unit: &str,
    done: u64,
    total: Option<u64>,
    elapsed: Duration,
    note: Option<&str>,
) -> String {
    let mut s = format!("{what}: {}", group(done));
    match total {
        Some(t) => {
            let _ = write!(s, " / {} {unit} ({} %)", group(t), percent(done, t));
        }
        None => {
            let _ = write!(s, " {unit}");
        }
    }
    let r = rate(done, elapsed);
    if let Some(r) = r {
        let _ = write!(s, ", {}/s", format_rate(r));
    }
    if let (Some(t), Some(r)) = (total, r) {
        if let Some(left) = time_left(done, t, r) {
            let _ = write!(s, ", about {} left", format_left(left));
        }
    }
    if let Some(note) = note {
        let _ = write!(s, "; {note}");
    }
    s
}

/// The summary line: `import: 1,000,000 messages in 27.9 s, 35,800/s`.
pub fn summary(what: &str, unit: &str, done: u64, elapsed: Duration) -> String {
    let mut s = format!(
        "{what}: {} {unit} in {}",
        group(done),
        format_duration(elapsed)
    );
    if let Some(r) = rate(done, elapsed) {
        let _ = write!(s, ", {}/s", format_rate(r));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(412_000), "412,000");
        assert_eq!(group(1_000_000), "1,000,000");
        assert_eq!(group(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn rates_keep_three_significant_digits() {
        assert_eq!(format_rate(103_456.0), "103,000");
        assert_eq!(format_rate(35_842.7), "35,800");
        assert_eq!(format_rate(35_850.0), "35,900");
        assert_eq!(format_rate(1_234_567.0), "1,230,000");
        assert_eq!(format_rate(999.6), "1,000");
        assert_eq!(format_rate(512.2), "512");
        assert_eq!(format_rate(12.0), "12");
        assert_eq!(format_rate(2.54), "2.5");
        assert_eq!(format_rate(0.24), "0.2");
    }

    #[test]
    fn rate_and_time_left_arithmetic() {
        assert_eq!(rate(0, Duration::from_secs(3)), None, "nothing done yet");
        assert_eq!(rate(10, Duration::ZERO), None, "no time elapsed");
        assert_eq!(rate(412_000, Duration::from_secs(4)), Some(103_000.0));
        // 588,000 left at 103,000/s: 5.7 s, shown rounded up.
        let left = time_left(412_000, 1_000_000, 103_000.0).unwrap();
        assert!((left.as_secs_f64() - 5.708).abs() < 0.001, "{left:?}");
        assert_eq!(format_left(left), "6 s");
        assert_eq!(time_left(1_000_000, 1_000_000, 103_000.0), None, "done");
        assert_eq!(time_left(1_100, 1_000, 5.0), None, "past the total");
        assert_eq!(time_left(1, 1_000, 0.0), None, "no rate");
        assert_eq!(
            time_left(0, 600, 1.0),
            Some(Duration::from_secs(600)),
            "ten minutes"
        );
        assert_eq!(format_left(Duration::from_secs(600)), "10 min 0 s");
        assert_eq!(format_left(Duration::from_millis(59_200)), "1 min 0 s");
        assert_eq!(format_left(Duration::from_millis(58_200)), "59 s");
        assert_eq!(format_left(Duration::from_secs(3_900)), "1 h 5 min");
    }

    #[test]
    fn percent_is_rounded_down_and_capped() {
        assert_eq!(percent(412_000, 1_000_000), 41);
        assert_eq!(percent(999_999, 1_000_000), 99, "not 100 until done");
        assert_eq!(percent(1_000_000, 1_000_000), 100);
        assert_eq!(percent(5, 3), 100);
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100, "no overflow");
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(format_duration(Duration::ZERO), "0 ms");
        assert_eq!(format_duration(Duration::from_micros(12_400)), "12 ms");
        assert_eq!(format_duration(Duration::from_millis(99)), "99 ms");
        assert_eq!(format_duration(Duration::from_millis(100)), "0.1 s");
        assert_eq!(format_duration(Duration::from_millis(420)), "0.4 s");
        assert_eq!(format_duration(Duration::from_millis(27_940)), "27.9 s");
        assert_eq!(format_duration(Duration::from_millis(59_990)), "1 min 0 s");
        assert_eq!(format_duration(Duration::from_secs(250)), "4 min 10 s");
        assert_eq!(format_duration(Duration::from_secs(3_900)), "1 h 5 min");
    }

    #[test]
    fn a_plain_line_with_a_total() {
        assert_eq!(
            line(
                "import",
                "messages",
                412_000,
                Some(1_000_000),
                Duration::from_secs(4),
                None
            ),
            "import: 412,000 / 1,000,000 messages (41 %), 103,000/s, about 6 s left"
        );
        assert_eq!(
            line(
                "compact",
                "entries",
                0,
                Some(1_000),
                Duration::from_secs(5),
                Some("copying")
            ),
            "compact: 0 / 1,000 entries (0 %); copying",
            "no rate nor time left before anything is done"
        );
        assert_eq!(
            line(
                "export",
                "messages",
                1_000,
                Some(1_000),
                Duration::from_secs(5),
                None
            ),
            "export: 1,000 / 1,000 messages (100 %), 200/s",
            "no time left once done"
        );
    }

    #[test]
    fn a_plain_line_without_a_total() {
        assert_eq!(
            line(
                "prune",
                "messages",
                412_000,
                None,
                Duration::from_secs(13),
                Some("room 41 of 100")
            ),
            "prune: 412,000 messages, 31,700/s; room 41 of 100"
        );
    }

    #[test]
    fn the_summary_line() {
        assert_eq!(
            summary(
                "import",
                "messages",
                1_000_000,
                Duration::from_millis(27_900)
            ),
            "import: 1,000,000 messages in 27.9 s, 35,800/s"
        );
        assert_eq!(
            summary("prune", "messages", 0, Duration::from_millis(80)),
            "prune: 0 messages in 80 ms"
        );
    }

    #[test]
    fn plain_lines_are_throttled() {
        let t0 = Instant::now();
        let every = Duration::from_secs(5);
        let mut throttle = Throttle::new(t0, every);
        assert!(!throttle.due(t0), "nothing at the start");
        assert!(!throttle.due(t0 + Duration::from_millis(4_999)));
        assert!(
            throttle.due(t0 + Duration::from_secs(5)),
            "first line at 5 s"
        );
        assert!(!throttle.due(t0 + Duration::from_secs(6)));
        assert!(!throttle.due(t0 + Duration::from_millis(9_999)));
        assert!(throttle.due(t0 + Duration::from_secs(11)));
        assert!(
            !throttle.due(t0 + Duration::from_secs(15)),
            "5 s after 11 s"
        );
        assert!(throttle.due(t0 + Duration::from_secs(16)));
        let mut every_tick = Throttle::new(t0, Duration::ZERO);
        assert!(
            every_tick.due(t0) && every_tick.due(t0),
            "0s: a line per tick"
        );
    }

    #[test]
    fn a_reporter_keeps_the_total_at_least_the_position() {
        let p = Progress::new(Mode::Quiet, "compact", "entries", Some(10));
        p.set(4);
        assert_eq!((p.done(), p.total.get()), (4, Some(10)));
        p.inc(8);
        assert_eq!(
            (p.done(), p.total.get()),
            (12, Some(12)),
            "raised to the position"
        );
        p.apply(&Tick {
            done: 20,
            total: Some(30),
            note: Some("room 2 of 3".into()),
        });
        assert_eq!((p.done(), p.total.get()), (20, Some(30)));
        assert_eq!(p.note.borrow().as_deref(), Some("room 2 of 3"));
        p.apply(&Tick {
            done: 25,
            total: None,
            note: None,
        });
        assert_eq!(p.total.get(), Some(30), "a tick without a total keeps it");
        p.finish();
    }

    #[test]
    fn ticks_travel_as_compact_json() {
        let tick = Tick {
            done: 3,
            total: None,
            note: None,
        };
        assert_eq!(serde_json::to_string(&tick).unwrap(), r#"{"done":3}"#);
        let back: Tick = serde_json::from_str(r#"{"done":3,"total":9,"note":"x"}"#).unwrap();
        assert_eq!(back.total, Some(9));
        assert_eq!(back.note.as_deref(), Some("x"));
    }
}
