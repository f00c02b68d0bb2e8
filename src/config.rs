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
    /// sled page cache in bytes.
    pub cache_bytes: u64,
    /// Password hashes computed at once (each takes ~19 MiB and tens of ms).
    pub hash_concurrency: usize,
    /// Delete messages older than this, checked periodically.
    pub retention: Option<Duration>,
    /// Keep at most this many messages per room, checked periodically.
    pub retention_per_room: Option<u64>,
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
            cache_bytes: 128 * 1024 * 1024,
            hash_concurrency: cores.max(1),
            retention: None,
            retention_per_room: None,
        }
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
        if self.max_frame < 1024 {
            return Err("--max-frame must be at least 1024 bytes".into());
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
        Ok(())
    }
}

/// Parses durations like `500ms`, `10s`, `5m`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 500ms, 10s, 5m or 7d ({e})"))
}
