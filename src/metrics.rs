//! Prometheus metrics, rendered by `GET /metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::admission::Refusal;
use crate::protocol::ErrorCode;

/// Reasons an HTTP request is refused, as `http_rejections` labels them: a malformed head (400),
/// a head over the size limit (431), a head not received in time, a WebSocket upgrade from a page
/// whose `Origin` is not allowed (403).
pub const HTTP_REJECTIONS: [&str; 4] = ["malformed", "head_too_large", "head_timeout", "origin"];

type Labels = [(&'static str, &'static str); 1];

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Messages stored since start.
    pub messages_stored: Counter,
    /// Text frames received.
    pub frames_in: Counter,
    /// Frames written to clients.
    pub frames_out: Counter,
    errors: Family<Labels, Counter>,
    /// Connections closed with 4008.
    pub slow_consumer_closes: Counter,
    /// Seconds per database flush.
    pub flush_seconds: Histogram,
    writes_refused: Family<Labels, Counter>,
    /// Changes of the write gate's state (docs/SECURITY.md, "A full or failing disk").
    pub storage_state_changes: Counter,
    /// Bytes available on the data directory's file system at the last reading.
    pub disk_free_bytes: Gauge,
    /// Password hashes computed for clients (logins and registrations).
    pub password_hashes: Counter,
    /// Logins and registrations refused by the login backoff or the registration limit.
    pub auth_throttled: Counter,
    connections_refused: Family<Labels, Counter>,
    http_rejections: Family<Labels, Counter>,
    /// Rooms loaded in memory (idle ones are unloaded).
    pub rooms_loaded: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("chatd");
        let connections = Gauge::default();
        let messages_stored = Counter::default();
        let frames_in = Counter::default();
        let frames_out = Counter::default();
        let errors = Family::<Labels, Counter>::default();
        let slow_consumer_closes = Counter::default();
        let rooms_loaded = Gauge::default();
        registry.register(
            "rooms_loaded",
            "Rooms loaded in memory (idle ones are unloaded; all stay on disk)",
            rooms_loaded.clone(),
        );
        let flush_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let password_hashes = Counter::default();
        let auth_throttled = Counter::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        registry.register(
            "messages_stored",
            "Messages stored",
            messages_stored.clone(),
        );
        registry.register(
            "frames_in",
            "Text frames received from clients",
            frames_in.clone(),
        );
        registry.register(
            "frames_out",
            "Frames written to clients",
            frames_out.clone(),
        );
        registry.register("errors", "Error frames sent, by code", errors.clone());
        registry.register(
            "slow_consumer_closes",
            "Connections closed with 4008: their queue overflowed or their replies went unread",
            slow_consumer_closes.clone(),
        );
        registry.register(
            "flush_seconds",
            "Duration of database flushes (group commit)",
            flush_seconds.clone(),
        );
        let writes_refused = Family::<Labels, Counter>::default();
        let storage_state_changes = Counter::default();
        let disk_free_bytes = Gauge::default();
        registry.register(
            "writes_refused",
            "Writes refused by the write gate, by reason",
            writes_refused.clone(),
        );
        registry.register(
            "storage_state_changes",
            "Changes of the write gate's state (writable, low space, flush stalled, write failed)",
            storage_state_changes.clone(),
        );
        registry.register(
            "disk_free_bytes",
            "Bytes available on the data directory's file system at the last reading",
            disk_free_bytes.clone(),
        );
        for condition in crate::store::gate::Condition::REFUSING {
            let _ = writes_refused.get_or_create(&[("reason", condition.as_str())]);
        }
        registry.register(
            "password_hashes",
            "Password hashes computed for logins and registrations",
            password_hashes.clone(),
        );
        registry.register(
            "auth_throttled",
            "Logins and registrations refused by the login backoff or the registration limit",
            auth_throttled.clone(),
        );
        for code in ErrorCode::ALL {
            let _ = errors.get_or_create(&[("code", code.as_str())]);
        }
        let connections_refused = Family::<Labels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused by a connection limit (503 at accept, or at login for an account), by reason",
            connections_refused.clone(),
        );
        for refusal in Refusal::ALL {
            let _ = connections_refused.get_or_create(&[("reason", refusal.reason())]);
        }
        let http_rejections = Family::<Labels, Counter>::default();
        registry.register(
            "http_rejections",
            "HTTP requests refused before any response body was served, by reason",
            http_rejections.clone(),
        );
        for reason in HTTP_REJECTIONS {
            let _ = http_rejections.get_or_create(&[("reason", reason)]);
        }
        Metrics {
            registry,
            connections,
            messages_stored,
            frames_in,
            frames_out,
            errors,
            slow_consumer_closes,
            flush_seconds,
            writes_refused,
            storage_state_changes,
            disk_free_bytes,
            password_hashes,
            auth_throttled,
            connections_refused,
            http_rejections,
            rooms_loaded,
        }
    }

    /// Counts a write the write gate refused.
    pub fn write_refused(&self, reason: &'static str) {
        self.writes_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Counts a connection refused by a limit.
    pub(crate) fn connection_refused(&self, refusal: Refusal) {
        self.connections_refused
            .get_or_create(&[("reason", refusal.reason())])
            .inc();
    }

    /// Counts an HTTP request refused for `reason` (one of [`HTTP_REJECTIONS`]).
    pub fn http_rejection(&self, reason: &'static str) {
        self.http_rejections
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Counts an error frame sent.
    pub fn error(&self, code: ErrorCode) {
        self.errors.get_or_create(&[("code", code.as_str())]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
