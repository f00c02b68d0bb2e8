//! Getting many clients authenticated and joined, quickly and with bounded time; statistics.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::net::{frame_type, Ev, Net};

/// One client to open: its token and the rooms it joins.
#[derive(Clone)]
pub struct Member {
    pub token: String,
    pub rooms: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum St {
    Todo,
    Connecting,
    Authing,
    Joining(usize),
    Done,
}

/// Opens `members` as connections `base..base + members.len()` of `net` against `addr`: connect,
/// `auth` with the token, `join` every room, wait for each `synced`. At most `par` in progress at
/// once. Frames other than the awaited ones (presence, messages) are ignored. Errors if a client
/// fails (after 3 connect attempts) or `limit` passes.
pub fn open_members(
    net: &mut Net,
    base: usize,
    addr: SocketAddr,
    members: &[Member],
    par: usize,
    limit: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    net.grow(base + members.len());
    let mut st = vec![St::Todo; members.len()];
    let mut tries = vec![0u8; members.len()];
    let mut todo: std::collections::VecDeque<usize> = (0..members.len()).collect();
    let mut in_progress = 0usize;
    let mut done = 0usize;
    let mut failure: Option<String> = None;
    while done < members.len() {
        if start.elapsed() > limit {
            return Err(format!(
                "only {done} of {} clients joined within {limit:?}",
                members.len()
            ));
        }
        if let Some(f) = failure.take() {
            return Err(f);
        }
        // Start (or restart) clients up to the parallelism bound.
        while in_progress < par {
            let Some(j) = todo.pop_front() else { break };
            tries[j] += 1;
            if tries[j] > 3 {
                return Err(format!("client {j} could not connect 3 times"));
            }
            net.connect(base + j, addr)
                .map_err(|e| format!("connect: {e}"))?;
            st[j] = St::Connecting;
            in_progress += 1;
        }
        net.pump(Duration::from_millis(50), |i, conn, ev, _| {
            if i < base || i >= base + members.len() {
                return;
            }
            let j = i - base;
            match ev {
                Ev::Opened => {
                    conn.send_text(
                        format!("{{\"type\":\"auth\",\"token\":\"{}\"}}", members[j].token)
                            .as_bytes(),
                    );
                    st[j] = St::Authing;
                }
                Ev::Text(t) => match (st[j], frame_type(t)) {
                    (St::Authing, b"welcome") => {
                        for room in &members[j].rooms {
                            conn.send_text(
                                format!("{{\"type\":\"join\",\"room\":\"{room}\"}}").as_bytes(),
                            );
                        }
                        st[j] = St::Joining(members[j].rooms.len());
                        if members[j].rooms.is_empty() {
                            st[j] = St::Done;
                            in_progress -= 1;
                            done += 1;
                        }
                    }
                    (St::Joining(left), b"synced") => {
                        if left <= 1 {
                            st[j] = St::Done;
                            in_progress -= 1;
                            done += 1;
                        } else {
                            st[j] = St::Joining(left - 1);
                        }
                    }
                    (St::Authing | St::Joining(_), b"error") => {
                        failure = Some(format!(
                            "client {j}: server error {}",
                            String::from_utf8_lossy(t)
                        ));
                    }
                    _ => {}
                },
                Ev::Closed(code) => match st[j] {
                    St::Connecting if code.is_none() => {
                        st[j] = St::Todo;
                        todo.push_back(j);
                        in_progress -= 1;
                    }
                    St::Done => {
                        failure = Some(format!("client {j} closed ({code:?}) after joining"))
                    }
                    _ => failure = Some(format!("client {j} closed ({code:?}) while opening")),
                },
            }
        });
    }
    Ok(start.elapsed())
}

/// Reads and drops frames until none arrived for `quiet` (or `limit` passed); returns frames
/// seen and whether it went quiet.
pub fn settle(net: &mut Net, quiet: Duration, limit: Duration) -> (u64, bool) {
    let start = Instant::now();
    let mut last = Instant::now();
    let mut frames = 0u64;
    while start.elapsed() < limit {
        let mut got = 0u64;
        net.pump(Duration::from_millis(20), |_, _, ev, _| {
            if let Ev::Text(_) = ev {
                got += 1;
            }
        });
        frames += got;
        if got > 0 {
            last = Instant::now();
        } else if last.elapsed() >= quiet {
            return (frames, true);
        }
    }
    (frames, false)
}

/// Value at quantile `p` of sorted samples.
pub fn quantile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Median with the range of a set of runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub med: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(xs: &[f64]) -> Spread {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread {
                med: f64::NAN,
                lo: f64::NAN,
                hi: f64::NAN,
                n: 0,
            };
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let med = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Spread {
            med,
            lo: v[0],
            hi: v[v.len() - 1],
            n: v.len(),
        }
    }

    /// "med (lo–hi)" with `prec` decimals.
    pub fn show(&self, prec: usize) -> String {
        if self.n == 0 {
            return "n/a".into();
        }
        if self.n == 1 {
            return format!("{:.prec$}", self.med);
        }
        format!(
            "{:.prec$} ({:.prec$}–{:.prec$})",
            self.med, self.lo, self.hi
        )
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.show(1))
    }
}

/// `a / b` as "1.23×", or "n/a".
pub fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}

/// The process-wide origin of [`micros`]: a monotonic instant and the wall-clock time read with it.
fn origin() -> (Instant, Duration) {
    static ORIGIN: std::sync::OnceLock<(Instant, Duration)> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (Instant::now(), wall)
    })
}

/// Microseconds since a fixed process-wide origin (publishers embed it; receivers subtract).
pub fn micros(at: Instant) -> u64 {
    at.saturating_duration_since(origin().0).as_micros() as u64
}

/// A wall-clock time (since the Unix epoch, as the kernel stamps packets) on [`micros`]'
/// timeline. The two clocks only drift apart by NTP's slewing, microseconds over a bench window.
pub fn micros_of_wall(wall: Duration) -> u64 {
    wall.saturating_sub(origin().1).as_micros() as u64
}

/// Parses the common bench flags: `--smoke`, `--runs N`, `--seconds S`, `--no-pin`, and ignores
/// `--bench` (passed by `cargo bench`).
pub struct Flags {
    pub smoke: bool,
    pub runs: Option<usize>,
    pub seconds: Option<f64>,
    pub pin: bool,
    pub rest: Vec<String>,
}

impl Flags {
    pub fn parse() -> Flags {
        let mut f = Flags {
            smoke: false,
            runs: None,
            seconds: None,
            pin: true,
            rest: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--smoke" => f.smoke = true,
                "--no-pin" => f.pin = false,
                "--bench" => {}
                "--runs" => f.runs = args.next().and_then(|v| v.parse().ok()),
                "--seconds" => f.seconds = args.next().and_then(|v| v.parse().ok()),
                _ => f.rest.push(a),
            }
        }
        f
    }

    /// The value after `--name` among the other flags.
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.rest.iter().position(|a| a == name)?;
        self.rest.get(i + 1).map(String::as_str)
    }

    /// The number after `--name`, else `smoke` in a smoke run and `full` otherwise.
    pub fn num(&self, name: &str, smoke: usize, full: usize) -> usize {
        self.get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(if self.smoke { smoke } else { full })
    }
}

/// What every bench program does first: read the flags, raise the open-files limit (returned),
/// and pin itself, the load generator, to its core (servers go to theirs when started).
pub fn prologue() -> (Flags, super::procs::Pinning, u64) {
    let flags = Flags::parse();
    let nofile = super::net::raise_nofile();
    let pin = if flags.pin {
        super::procs::Pinning::standard()
    } else {
        super::procs::Pinning::NONE
    };
    super::procs::pin_self(pin.gen_core);
    (flags, pin, nofile)
}
