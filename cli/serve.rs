//! `chatd serve`: flags (each also readable from a `CHATD_*` environment variable) into a
//! [`chatd::Config`], logging, signals, and the server's lifetime.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context};
use argh::FromArgs;
use chatd::config::{parse_duration, Config, Durability, Registration};

/// Run the chat server.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "serve",
    note = "Every flag can also be set with an environment variable named after it, e.g. CHATD_LISTEN, CHATD_DATA_DIR, CHATD_PING_INTERVAL; a flag wins over the variable. Durations take 500ms, 10s, 5m, 7d."
)]
pub struct Serve {
    /// address to listen on (default 0.0.0.0:8000)
    #[argh(option)]
    listen: Option<String>,
    /// data directory holding the database (default ./data)
    #[argh(option)]
    data_dir: Option<String>,
    /// executor threads (default: number of cores)
    #[argh(option)]
    threads: Option<String>,
    /// interval between WebSocket pings (default 25s)
    #[argh(option)]
    ping_interval: Option<String>,
    /// close connections silent for this long with 4000 (default 60s)
    #[argh(option)]
    idle_timeout: Option<String>,
    /// time allowed to authenticate after connecting (default 10s)
    #[argh(option)]
    auth_timeout: Option<String>,
    /// how long a dropped user stays online (default 10s)
    #[argh(option)]
    presence_grace: Option<String>,
    /// largest incoming message in bytes (default 65536)
    #[argh(option)]
    max_frame: Option<String>,
    /// most connections served at once (default 10000)
    #[argh(option)]
    max_connections: Option<String>,
    /// sends per second per connection (default 10)
    #[argh(option)]
    rate: Option<String>,
    /// send burst per connection (default 20)
    #[argh(option)]
    burst: Option<String>,
    /// open or closed (default open)
    #[argh(option)]
    registration: Option<String>,
    /// broadcast frames queued per connection before closing it with 4008 (default 1024)
    #[argh(option)]
    send_queue: Option<String>,
    /// most messages replayed by a join with since (default 500)
    #[argh(option)]
    replay_limit: Option<String>,
    /// bytes of replies held per connection; replays are read as the client takes them and a history page stops at this size (default 262144)
    #[argh(option)]
    reply_buffer: Option<String>,
    /// close with 4008 a connection whose replies wait this long unread (default 30s)
    #[argh(option)]
    reply_timeout: Option<String>,
    /// new rooms one account may create per hour by joining them (default 60)
    #[argh(option)]
    rooms_per_hour: Option<String>,
    /// unload from memory rooms nobody is in and nothing happened in for this long; they stay on disk (default 10m)
    #[argh(option)]
    room_unload_after: Option<String>,
    /// how long a session token stays valid (default 7d)
    #[argh(option)]
    token_ttl: Option<String>,
    /// strict (ack after fsync, default) or relaxed (ack at once; may lose the last 0.5 s on a crash)
    #[argh(option)]
    durability: Option<String>,
    /// database cache in MiB (default 128)
    #[argh(option)]
    cache_mb: Option<String>,
    /// delete messages older than this (e.g. 30d), checked at start and hourly (default: keep)
    #[argh(option)]
    retention: Option<String>,
    /// keep at most this many newest messages per room, checked at start and hourly
    #[argh(option)]
    retention_per_room: Option<String>,
    /// log filter, e.g. info, debug, chatd=debug (default info)
    #[argh(option)]
    log: Option<String>,
}

/// The flag's value, else the `CHATD_*` variable's, parsed with `parse`.
fn setting<T>(
    flag: &Option<String>,
    name: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> anyhow::Result<Option<T>> {
    let var = format!("CHATD_{}", name.to_ascii_uppercase().replace('-', "_"));
    let (raw, source) = match flag {
        Some(value) => (value.clone(), format!("--{name}")),
        None => match std::env::var(&var) {
            Ok(value) => (value, var),
            Err(_) => return Ok(None),
        },
    };
    parse(&raw).map(Some).map_err(|e| anyhow!("{source}: {e}"))
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.trim()
        .parse()
        .map_err(|e| format!("`{text}` is not a valid number ({e})"))
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

impl Serve {
    fn config(&self) -> anyhow::Result<(Config, String)> {
        let listen: SocketAddr = setting(&self.listen, "listen", |s| {
            s.parse()
                .map_err(|e| format!("`{s}` is not an address like 0.0.0.0:8000 ({e})"))
        })?
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8000)));
        let data_dir = setting(&self.data_dir, "data-dir", |s| Ok(PathBuf::from(s)))?
            .unwrap_or_else(|| PathBuf::from("data"));
        let mut c = Config::new(listen, data_dir);
        macro_rules! set {
            ($field:expr, $flag:ident, $name:literal, $parse:expr) => {
                if let Some(v) = setting(&self.$flag, $name, $parse)? {
                    $field = v;
                }
            };
        }
        set!(c.threads, threads, "threads", number);
        set!(c.ping_interval, ping_interval, "ping-interval", duration);
        set!(c.idle_timeout, idle_timeout, "idle-timeout", duration);
        set!(c.auth_timeout, auth_timeout, "auth-timeout", duration);
        set!(c.presence_grace, presence_grace, "presence-grace", duration);
        set!(c.max_frame, max_frame, "max-frame", number);
        set!(
            c.max_connections,
            max_connections,
            "max-connections",
            number
        );
        set!(c.rate_per_sec, rate, "rate", number);
        set!(c.rate_burst, burst, "burst", number);
        set!(c.registration, registration, "registration", |s: &str| {
            s.parse::<Registration>()
        });
        set!(c.send_queue, send_queue, "send-queue", number);
        set!(c.replay_limit, replay_limit, "replay-limit", number);
        set!(c.reply_buffer, reply_buffer, "reply-buffer", number);
        set!(c.reply_timeout, reply_timeout, "reply-timeout", duration);
        set!(c.rooms_per_hour, rooms_per_hour, "rooms-per-hour", number);
        set!(
            c.room_unload_after,
            room_unload_after,
            "room-unload-after",
            duration
        );
        set!(c.token_ttl, token_ttl, "token-ttl", duration);
        set!(c.durability, durability, "durability", |s: &str| s
            .parse::<Durability>(
        ));
        c.retention = setting(&self.retention, "retention", duration)?;
        c.retention_per_room = setting(&self.retention_per_room, "retention-per-room", number)?;
        if c.retention.is_some_and(|d| d.is_zero()) || c.retention_per_room == Some(0) {
            return Err(anyhow!(
                "--retention and --retention-per-room must be above zero (leave them out to keep everything)"
            ));
        }
        if let Some(mb) = setting(&self.cache_mb, "cache-mb", number::<u64>)? {
            c.cache_bytes = mb * 1024 * 1024;
        }
        let log = setting(&self.log, "log", |s| Ok(s.to_owned()))?.unwrap_or_else(|| "info".into());
        c.validate().map_err(|e| anyhow!(e))?;
        Ok((c, log))
    }

    /// Runs the server until SIGINT/SIGTERM; a second signal exits at once.
    pub fn run(self) -> anyhow::Result<()> {
        let (config, log) = self.config()?;
        let filter = tracing_subscriber::EnvFilter::try_new(&log).with_context(|| {
            format!("--log: `{log}` is not a log filter like info or chatd=debug")
        })?;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
        if config.durability == Durability::Relaxed {
            tracing::warn!("durability is relaxed: acknowledged messages from the last 0.5 s can be lost in a crash");
        }
        let (stop, stopped) = async_channel::bounded::<()>(1);
        static SIGNALS: AtomicUsize = AtomicUsize::new(0);
        ctrlc::set_handler(move || {
            if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
                tracing::info!("signal received: shutting down (send another to exit at once)");
                let _ = stop.try_send(());
            } else {
                std::process::exit(130);
            }
        })
        .context("installing the signal handler")?;
        let data_dir = config.data_dir.clone();
        let server = chatd::Server::bind(config)?;
        let addr = server.local_addr().context("reading the bound address")?;
        tracing::info!(%addr, data_dir = %data_dir.display(), "chatd {} serving", env!("CARGO_PKG_VERSION"));
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {addr}")
            .and_then(|()| stdout.flush())
            .context("writing to stdout")?;
        server.run(stopped)?;
        Ok(())
    }
}
