//! Pings and deadlines for every connection, from one task instead of a timer per connection.
//!
//! A timer inside each connection's loop costs a reactor registration every time the loop turns
//! (once per frame received or sent) and its state lives in every idle connection's future. Here
//! each connection keeps three timestamps in atomics ([`Liveness`]); one server-wide task wakes
//! a few times per shortest interval, sends the Pings that are due straight to the sockets, and
//! asks connections past their auth or idle deadline to close. Deadlines are therefore late by at
//! most one tick, a small fraction of the interval they enforce.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::outbox::{CloseRequest, Outbox};
use crate::protocol::close;
use crate::state::State;
use crate::wire::Encoded;

/// Milliseconds on a monotonic clock that starts with the process.
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When a connection opened, last spoke, and was last pinged.
pub struct Liveness {
    opened: u64,
    last_received: AtomicU64,
    last_ping: AtomicU64,
    authenticated: AtomicBool,
}

impl Default for Liveness {
    fn default() -> Self {
        let now = mono_ms();
        Liveness {
            opened: now,
            last_received: AtomicU64::new(now),
            last_ping: AtomicU64::new(now),
            authenticated: AtomicBool::new(false),
        }
    }
}

impl Liveness {
    /// A frame arrived: the idle deadline moves.
    pub fn received(&self) {
        self.last_received.store(mono_ms(), Ordering::Relaxed);
    }

    /// The connection authenticated: the auth deadline no longer applies.
    pub fn authenticated(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }

    /// What is due at `now`: a close request, a ping, or nothing.
    fn due(&self, now: u64, deadlines: &Deadlines) -> Option<Due> {
        if !self.authenticated.load(Ordering::Relaxed) && now >= self.opened + deadlines.auth {
            return Some(Due::Close(CloseRequest {
                code: close::POLICY,
                reason: "auth timeout",
            }));
        }
        if now >= self.last_received.load(Ordering::Relaxed) + deadlines.idle {
            return Some(Due::Close(CloseRequest {
                code: close::IDLE,
                reason: "idle timeout",
            }));
        }
        if now >= self.last_ping.load(Ordering::Relaxed) + deadlines.ping {
            self.last_ping.store(now, Ordering::Relaxed);
            return Some(Due::Ping);
        }
        None
    }
}

enum Due {
    Close(CloseRequest),
    Ping,
}

/// The configured intervals, in ms.
struct Deadlines {
    auth: u64,
    idle: u64,
    ping: u64,
}

impl Deadlines {
    fn new(config: &Config) -> Deadlines {
        let ms = |d: Duration| d.as_millis() as u64;
        Deadlines {
            auth: ms(config.auth_timeout),
            idle: ms(config.idle_timeout),
            ping: ms(config.ping_interval),
        }
    }

    /// A quarter of the shortest interval, between 10 ms and 1 s.
    fn tick(&self) -> Duration {
        let shortest = self.auth.min(self.idle).min(self.ping);
        Duration::from_millis((shortest / 4).clamp(10, 1000))
    }
}

/// Runs for the server's life: pings connections and closes the ones past a deadline.
pub async fn run(state: Arc<State>) {
    let deadlines = Deadlines::new(&state.config);
    let ping = Encoded::ping();
    let mut connections: Vec<Arc<Outbox>> = Vec::new();
    loop {
        smol::Timer::after(deadlines.tick()).await;
        state.connections_into(&mut connections);
        let now = mono_ms();
        for outbox in connections.drain(..) {
            match outbox.liveness.due(now, &deadlines) {
                Some(Due::Close(request)) => outbox.close(request),
                Some(Due::Ping) => outbox.control(ping.wire_bytes()),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_in_order_auth_idle_ping() {
        let deadlines = Deadlines {
            auth: 100,
            idle: 1000,
            ping: 300,
        };
        let liveness = Liveness::default();
        let t0 = liveness.opened;
        assert!(liveness.due(t0 + 50, &deadlines).is_none());
        assert!(matches!(
            liveness.due(t0 + 100, &deadlines),
            Some(Due::Close(CloseRequest { code: 1008, .. }))
        ));
        liveness.authenticated();
        assert!(matches!(
            liveness.due(t0 + 300, &deadlines),
            Some(Due::Ping)
        ));
        assert!(
            liveness.due(t0 + 400, &deadlines).is_none(),
            "one ping per interval"
        );
        liveness.last_received.store(t0 + 500, Ordering::Relaxed);
        assert!(matches!(
            liveness.due(t0 + 600, &deadlines),
            Some(Due::Ping)
        ));
        assert!(matches!(
            liveness.due(t0 + 1500, &deadlines),
            Some(Due::Close(CloseRequest { code: 4000, .. }))
        ));
        assert_eq!(deadlines.tick(), Duration::from_millis(25));
    }
}
