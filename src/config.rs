//! Server settings, with the protocol's defaults. The CLI fills this from flags and environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Whether `auth` with `register: true` may create accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Anyone may register.
    Open,
    /// Only admins create accounts.
    Closed,
}

impl std::str::FromStr for Registration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(Registration::Open),
            "closed" => Ok(Registration::Closed),
            _ => Err(format!("expected `open` or `closed`, got `{s}`")),
        }
    }
}

/// When a message is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Ack and broadcast only after fsync (group commit). The default.
    Strict,
    /// Ack at once; sled flushes every 500 ms, so a crash can lose the last half second of
    /// acknowledged messages. For throwaway deployments and benchmarks only.
    Relaxed,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" => Ok(Durability::Strict),
            "relaxed" => Ok(Durability::Relaxed),
            _ => Err(format!("expected `strict` or `relaxed`, got `{s}`")),
        }
    }
}

/// Which web pages may open a WebSocket (checked against the upgrade's `Origin` header; a
/// request without one, as non-browser clients send, is never refused for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Only pages served from the host and port the request was sent to (its `Host`).
    SameOrigin,
    /// Any page (`*`).
    Any,
    /// Exactly these origins, each `scheme://host[:port]`, lower-cased, default port left out.
    List(Vec<String>),
}

impl std::str::FromStr for AllowedOrigins {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(AllowedOrigins::Any);
        }
        let origins = s
            .split(',')
            .map(|origin| {
                crate::origin::normalize(origin.trim()).ok_or_else(|| {
                    format!("`{}` is not an origin like https://chat.example.com or http://localhost:8000", origin.trim())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowedOrigins::List(origins))
    }
}

/// Everything `chatd serve` can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (the database lives in `db/` inside it).
    pub data_dir: PathBuf,
    /// Executor threads.
    pub threads: usize,
    /// Interval between WebSocket pings.
    pub ping_interval: Duration,
    /// A connection that sends nothing for this long is closed with 4000.
    pub idle_timeout: Duration,
    /// Time allowed between the upgrade and a successful `auth`.
    pub auth_timeout: Duration,
    /// How long a user who dropped without `leave` still counts as online.
    pub presence_grace: Duration,
    /// Largest incoming message in bytes (after reassembly).
    pub max_frame: usize,
    /// Connections served at once (HTTP and WebSocket); more are refused with 503.
    pub max_connections: usize,
    /// `send` frames per second per connection (token bucket refill).
    pub rate_per_sec: u32,
    /// Token bucket size.
    pub rate_burst: u32,
    /// Whether clients may register.
    pub registration: Registration,
    /// Broadcast frames queued per connection before it is closed with 4008.
    pub send_queue: usize,
    /// Most messages replayed by `join` with `since`.
    pub replay_limit: usize,
    /// Bytes of a connection's own replies held in memory at once (replays are read from the
    /// database as the client takes them; a history page stops at this size).
    pub reply_buffer: usize,
    /// A connection whose replies wait this long without the client reading any is closed
    /// with 4008.
    pub reply_timeout: Duration,
    /// New rooms one account may create per hour (`join` of a room that does not exist).
    pub rooms_per_hour: u32,
    /// Rooms nobody is in and nothing happened in for this long leave memory (not the disk).
    pub room_unload_after: Duration,
    /// How long a token resumes a session.
    pub token_ttl: Duration,
    /// How long a `cid` is remembered.
    pub cid_ttl: Duration,
    /// When sends are acknowledged.
    pub durability: Durability,
    /// Cluster mode: the Redis URL (`redis://HOST:PORT[/DB]`) every node of the cluster shares.
    pub cluster: Option<String>,
    /// sled page cache in bytes.
    pub cache_bytes: u64,
    /// Password hashes computed at once (each takes ~19 MiB and tens of ms).
    pub hash_concurrency: usize,
    /// Delete messages older than this, checked periodically.
    pub retention: Option<Duration>,
    /// Keep at most this many messages per room, checked periodically.
    pub retention_per_room: Option<u64>,
    /// PEM certificate chain for built-in TLS (with `tls_key`); plain TCP without.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for built-in TLS.
    pub tls_key: Option<PathBuf>,
    /// New messages are refused while the data directory's file system has fewer bytes
    /// available (0: no free-space check).
    pub min_free_space: u64,
    /// A group commit (write + fsync) running longer than this marks the server unhealthy and
    /// refuses writes until it returns.
    pub flush_timeout: Duration,
    /// Failed logins one address may make before its logins back off (an account allows ten
    /// times as many, from all addresses together).
    pub login_free_failures: u32,
    /// Longest lock after failed logins from one address.
    pub login_max_lock: Duration,
    /// Registrations one address may attempt per hour (0: no limit).
    pub registrations_per_ip_hour: u32,
    /// Password hashes one address may have queued or running at once (0: no limit).
    pub hash_jobs_per_ip: u32,
    /// `send` frames per second per account, across its connections (the CLI's default is
    /// twice `rate_per_sec`, so one connection alone never meets it).
    pub account_rate: u32,
    /// The account bucket's size (the CLI's default: twice `rate_burst`).
    pub account_burst: u32,
    /// MiB of message text one account may store per UTC day (0: no quota).
    pub account_quota_mb: u64,
    /// Slots of `max_connections` that unauthenticated sockets may not take; `None`: a tenth.
    pub reserved_connections: Option<usize>,
    /// Sockets one IP address (IPv6: one /64) may hold open.
    pub max_connections_per_ip: usize,
    /// Unauthenticated sockets (HTTP requests included) one IP address may hold open.
    pub max_unauthenticated_per_ip: usize,
    /// Authenticated connections one account may hold open.
    pub max_connections_per_account: usize,
    /// Which web pages may open a WebSocket.
    pub allowed_origins: AllowedOrigins,
    /// Where `/healthz` and `/metrics` are served instead of the main port, if set.
    pub metrics_listen: Option<SocketAddr>,
}

/// Smallest `--reply-buffer`: a few ordinary messages per page.
pub const MIN_REPLY_BUFFER: usize = 16 * 1024;

/// Protocol limit on text length, in Unicode scalar values.
pub const MAX_TEXT: usize = 4000;

impl Config {
    /// The protocol's defaults, listening on `listen` with data in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Config {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Config {
            listen,
            data_dir,
            threads: cores,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            auth_timeout: Duration::from_secs(10),
            presence_grace: Duration::from_secs(10),
            max_frame: 64 * 1024,
            max_connections: 10_000,
            rate_per_sec: 10,
            rate_burst: 20,
            registration: Registration::Open,
            send_queue: 1024,
            replay_limit: 500,
            reply_buffer: 256 * 1024,
            reply_timeout: Duration::from_secs(30),
            rooms_per_hour: 60,
            room_unload_after: Duration::from_secs(600),
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            cid_ttl: Duration::from_secs(48 * 3600),
            durability: Durability::Strict,
            cluster: None,
            cache_bytes: 128 * 1024 * 1024,
            hash_concurrency: cores.max(1),
            retention: None,
            retention_per_room: None,
            tls_cert: None,
            tls_key: None,
            min_free_space: 64 * 1024 * 1024,
            flush_timeout: Duration::from_secs(5),
            login_free_failures: 5,
            login_max_lock: Duration::from_secs(15 * 60),
            registrations_per_ip_hour: 10,
            hash_jobs_per_ip: 4,
            account_rate: 20,
            account_burst: 40,
            account_quota_mb: 100,
            reserved_connections: None,
            max_connections_per_ip: 256,
            max_unauthenticated_per_ip: 32,
            max_connections_per_account: 32,
            allowed_origins: AllowedOrigins::SameOrigin,
            metrics_listen: None,
        }
    }

    /// Slots only authenticated connections may take.
    pub fn reserved_connections(&self) -> usize {
        self.reserved_connections
            .unwrap_or(self.max_connections / 10)
    }

    /// The sled directory inside the data directory.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    /// Checks values the protocol constrains; the message says which flag to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.send_queue < 256 {
            return Err(
                "--send-queue must be at least 256 frames (the protocol promises it)".into(),
            );
        }
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if self.rate_per_sec == 0 || self.rate_burst == 0 {
            return Err("--rate and --burst must be at least 1".into());
        }
        if self.account_rate == 0 || self.account_burst == 0 {
            return Err("--account-rate and --account-burst must be at least 1".into());
        }
        if self.login_max_lock < Duration::from_secs(1) {
            return Err("--login-max-lock must be at least 1s".into());
        }
        if self.max_frame < 1024 {
            return Err("--max-frame must be at least 1024 bytes".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key go together: give both, or neither".into());
        }
        if self.replay_limit == 0 {
            return Err("--replay-limit must be at least 1".into());
        }
        if self.reply_buffer < MIN_REPLY_BUFFER {
            return Err(format!(
                "--reply-buffer must be at least {MIN_REPLY_BUFFER} bytes"
            ));
        }
        if self.rooms_per_hour == 0 {
            return Err("--rooms-per-hour must be at least 1".into());
        }
        if self.room_unload_after.is_zero() {
            return Err("--room-unload-after must be above zero".into());
        }
        if self.reply_timeout.is_zero() {
            return Err("--reply-timeout must be above zero".into());
        }
        if self.ping_interval.is_zero()
            || self.idle_timeout.is_zero()
            || self.auth_timeout.is_zero()
        {
            return Err(
                "--ping-interval, --idle-timeout and --auth-timeout must be above zero".into(),
            );
        }
        if self.flush_timeout < Duration::from_millis(100) {
            return Err("--flush-timeout must be at least 100ms (a healthy fsync can take tens of milliseconds under load)".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.reserved_connections() >= self.max_connections {
            return Err("--reserved-connections must be below --max-connections (the rest is where new connections log in)".into());
        }
        if self.max_connections_per_ip == 0
            || self.max_unauthenticated_per_ip == 0
            || self.max_connections_per_account == 0
        {
            return Err("--max-connections-per-ip, --max-unauthenticated-per-ip and --max-connections-per-account must be at least 1".into());
        }
        if self.metrics_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err("--metrics-listen must differ from --listen".into());
        }
        Ok(())
    }
}

/// Parses byte sizes like `64MiB`, `1GiB`, `512KiB`, `500MB` or a plain number of bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_bytes: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(format!("`{text}` is not a size like 64MiB, 1GiB or 500MB")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_bytes))
        .ok_or_else(|| format!("`{text}` is not a size like 64MiB, 1GiB or 500MB"))
}

/// Parses durations like `500ms`, `10s`, `5m`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 500ms, 10s, 5m or 7d ({e})"))
}

#[cfg(test)]
mod disk_settings_tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units_and_refuse_the_rest() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes(" 1GiB "), Ok(1 << 30));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("0"), Ok(0));
        for bad in ["", "MiB", "-1MiB", "1.5GiB", "12XB", "99999999999TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_flush_timeout_below_100ms_is_refused() {
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), PathBuf::from("d"));
        assert!(config.validate().is_ok());
        config.flush_timeout = Duration::from_millis(50);
        assert!(config.validate().unwrap_err().contains("--flush-timeout"));
    }
}
