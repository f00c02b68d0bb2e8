//! `chatd serve`: flags (each also readable from a `CHATD_*` environment variable) into a
//! [`chatd::Config`], logging, signals, and the server's lifetime.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context};
use argh::FromArgs;
use chatd::config::{
    parse_bytes, parse_duration, AllowedOrigins, Config, Durability, Registration,
};

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
    /// run as one node of a cluster: share rooms and accounts through this Redis (redis://HOST:PORT[/DB]; needs appendonly yes and appendfsync always unless --durability relaxed)
    #[argh(option)]
    cluster: Option<String>,
    /// database cache in MiB (default 128)
    #[argh(option)]
    cache_mb: Option<String>,
    /// delete messages older than this (e.g. 30d), checked at start and hourly (default: keep)
    #[argh(option)]
    retention: Option<String>,
    /// keep at most this many newest messages per room, checked at start and hourly
    #[argh(option)]
    retention_per_room: Option<String>,
    /// PEM certificate chain: serve https:// and wss:// (with --tls-key; reread on SIGHUP)
    #[argh(option)]
    tls_cert: Option<String>,
    /// PEM private key for --tls-cert
    #[argh(option)]
    tls_key: Option<String>,
    /// failed logins from one address before its logins back off exponentially (default 5; an account allows 10 times as many)
    #[argh(option)]
    login_free_failures: Option<String>,
    /// longest lock after failed logins from one address (default 15m)
    #[argh(option)]
    login_max_lock: Option<String>,
    /// registrations one address may attempt per hour, 0 for no limit (default 10)
    #[argh(option)]
    registrations_per_ip: Option<String>,
    /// password hashes one address may have waiting or running at once, 0 for no limit (default 4)
    #[argh(option)]
    hash_jobs_per_ip: Option<String>,
    /// sends per second per account across its connections (default twice --rate)
    #[argh(option)]
    account_rate: Option<String>,
    /// send burst per account across its connections (default twice --burst)
    #[argh(option)]
    account_burst: Option<String>,
    /// message text one account may store per UTC day in MiB, 0 for no quota (default 100)
    #[argh(option)]
    account_quota_mb: Option<String>,
    /// connection slots that unauthenticated sockets may not take, kept for logged-in users (default: a tenth of --max-connections)
    #[argh(option)]
    reserved_connections: Option<String>,
    /// most sockets open at once from one IP address, IPv6 counted by /64 (default 256)
    #[argh(option)]
    max_connections_per_ip: Option<String>,
    /// most sockets not yet logged in (HTTP requests included) from one IP address (default 32)
    #[argh(option)]
    max_unauthenticated_per_ip: Option<String>,
    /// most connections one account may hold open (default 32)
    #[argh(option)]
    max_connections_per_account: Option<String>,
    /// origins whose pages may open a WebSocket, comma-separated (e.g. https://chat.example.com), or * for any (default: the server's own, matching the Host header)
    #[argh(option)]
    allowed_origins: Option<String>,
    /// serve /healthz and /metrics on this address only, not on --listen (default: on --listen)
    #[argh(option)]
    metrics_listen: Option<String>,
    /// log filter, e.g. info, debug, chatd=debug (default info)
    #[argh(option)]
    log: Option<String>,
    /// refuse new messages while the data directory has less free space, e.g. 64MiB, 1GiB; 0 turns the check off (default 64MiB)
    #[argh(option)]
    min_free_space: Option<String>,
    /// a database write (group commit + fsync) running longer marks the server unhealthy and refuses writes until it returns (default 5s)
    #[argh(option)]
    flush_timeout: Option<String>,
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
        set!(
            c.min_free_space,
            min_free_space,
            "min-free-space",
            parse_bytes
        );
        set!(c.flush_timeout, flush_timeout, "flush-timeout", duration);
        set!(c.durability, durability, "durability", |s: &str| s
            .parse::<Durability>(
        ));
        set!(c.cluster, cluster, "cluster", |s: &str| Ok::<_, String>(
            Some(s.to_string())
        ));
        set!(
            c.login_free_failures,
            login_free_failures,
            "login-free-failures",
            number
        );
        set!(c.login_max_lock, login_max_lock, "login-max-lock", duration);
        set!(
            c.registrations_per_ip_hour,
            registrations_per_ip,
            "registrations-per-ip",
            number
        );
        set!(
            c.hash_jobs_per_ip,
            hash_jobs_per_ip,
            "hash-jobs-per-ip",
            number
        );
        // Unless set, an account may send twice what one connection may: a single connection
        // never meets the account's limit, twenty of them do.
        c.account_rate = setting(&self.account_rate, "account-rate", number)?
            .unwrap_or_else(|| c.rate_per_sec.saturating_mul(2));
        c.account_burst = setting(&self.account_burst, "account-burst", number)?
            .unwrap_or_else(|| c.rate_burst.saturating_mul(2));
        set!(
            c.account_quota_mb,
            account_quota_mb,
            "account-quota-mb",
            number
        );
        c.retention = setting(&self.retention, "retention", duration)?;
        c.retention_per_room = setting(&self.retention_per_room, "retention-per-room", number)?;
        if c.retention.is_some_and(|d| d.is_zero()) || c.retention_per_room == Some(0) {
            return Err(anyhow!(
                "--retention and --retention-per-room must be above zero (leave them out to keep everything)"
            ));
        }
        c.tls_cert = setting(&self.tls_cert, "tls-cert", |s| Ok(PathBuf::from(s)))?;
        c.tls_key = setting(&self.tls_key, "tls-key", |s| Ok(PathBuf::from(s)))?;
        c.reserved_connections =
            setting(&self.reserved_connections, "reserved-connections", number)?;
        set!(
            c.max_connections_per_ip,
            max_connections_per_ip,
            "max-connections-per-ip",
            number
        );
        set!(
            c.max_unauthenticated_per_ip,
            max_unauthenticated_per_ip,
            "max-unauthenticated-per-ip",
            number
        );
        set!(
            c.max_connections_per_account,
            max_connections_per_account,
            "max-connections-per-account",
            number
        );
        set!(
            c.allowed_origins,
            allowed_origins,
            "allowed-origins",
            |s: &str| s.parse::<AllowedOrigins>()
        );
        c.metrics_listen = setting(&self.metrics_listen, "metrics-listen", |s| {
            s.parse()
                .map_err(|e| format!("`{s}` is not an address like 127.0.0.1:9100 ({e})"))
        })?;
        if let Some(mb) = setting(&self.cache_mb, "cache-mb", number::<u64>)? {
            c.cache_bytes = mb * 1024 * 1024;
        }
        let log = setting(&self.log, "log", |s| Ok(s.to_owned()))?.unwrap_or_else(|| "info".into());
        c.validate().map_err(|e| anyhow!(e))?;
        Ok((c, log))
    }

    /// Runs the server until SIGINT/SIGTERM; a second signal exits at once. SIGHUP rereads the
    /// TLS certificate and key.
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
        let data_dir = config.data_dir.clone();
        let server = chatd::Server::bind(config)?;
        handle_signals(stop, server.tls())?;
        let addr = server.local_addr().context("reading the bound address")?;
        if let Some(metrics) = server.metrics_addr() {
            tracing::info!(%metrics, "/healthz and /metrics served only there");
        }
        tracing::info!(%addr, data_dir = %data_dir.display(), "chatd {} serving", env!("CARGO_PKG_VERSION"));
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {addr}")
            .and_then(|()| stdout.flush())
            .context("writing to stdout")?;
        match server.run(stopped)? {
            chatd::Stopped::Requested => Ok(()),
            chatd::Stopped::ToReopen => Err(reexec(addr)),
        }
    }
}

/// Starts this program again in this process (same pid, same arguments, the address already
/// bound instead of `--listen`, so a port chosen by the kernel stays the same). Everything the
/// old image held closes on exec, the database lock included. Returns only if exec fails.
fn reexec(addr: SocketAddr) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut given = std::env::args_os().skip(1);
    while let Some(arg) = given.next() {
        if arg == "--listen" {
            given.next();
        } else {
            args.push(arg);
        }
    }
    args.push("--listen".into());
    args.push(addr.to_string().into());
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return anyhow!("cannot find this program to start it again: {e}"),
    };
    let error = std::process::Command::new(&exe).args(&args).exec();
    anyhow!("starting {} again failed: {error}", exe.display())
}

/// SIGINT (Ctrl-C, through ctrlc) and SIGTERM ask for a graceful shutdown, and a second one
/// exits at once; SIGHUP rereads the TLS certificate, keeping the old one if the new files are
/// unusable. Installed after the server is bound, so a start that fails still ends on the
/// first signal.
fn handle_signals(
    stop: async_channel::Sender<()>,
    tls: Option<std::sync::Arc<chatd::tls::Tls>>,
) -> anyhow::Result<()> {
    static SIGNALS: AtomicUsize = AtomicUsize::new(0);
    let shut_down = move || {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
            tracing::info!("signal received: shutting down (send another to exit at once)");
            let _ = stop.try_send(());
        } else {
            std::process::exit(130);
        }
    };
    let on_term = shut_down.clone();
    ctrlc::set_handler(shut_down).context("installing the SIGINT handler")?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing the SIGTERM and SIGHUP handlers")?;
    std::thread::Builder::new()
        .name("chatd-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal != signal_hook::consts::SIGHUP {
                    on_term();
                    continue;
                }
                match &tls {
                    None => tracing::info!("SIGHUP: nothing to reload (no --tls-cert)"),
                    Some(tls) => match tls.reload() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the previous one stays in use"),
                    },
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
