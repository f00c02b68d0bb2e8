//! Prometheus metrics, rendered by `GET /metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;

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
        for code in ErrorCode::ALL {
            let _ = errors.get_or_create(&[("code", code.as_str())]);
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
            rooms_loaded,
        }
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
