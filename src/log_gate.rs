//! Warnings that an attacker cannot turn into a log flood.
//!
//! Refused connections and malformed requests are worth a line (an operator must be able to see
//! an attack), but one line per event lets a flood fill the disk. A [`LogGate`] lets the first
//! event of each interval through and counts the rest, which the next line reports. Every event
//! is still counted in /metrics by its caller.
//!
//! Invariant: at most one line per gate per [`INTERVAL`], whatever the event rate; lock-free, so
//! the accept loop never waits on it.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::hub::now_ms;

/// The least time between two lines from one gate.
const INTERVAL_MS: u64 = 10_000;

/// One kind of event's log budget.
pub(crate) struct LogGate {
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    /// A gate that lets the next event through.
    pub(crate) const fn new() -> LogGate {
        LogGate {
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(events left unlogged since the last line)` if this event may be logged, else `None`
    /// (and the event is counted for the next line).
    pub(crate) fn pass(&self) -> Option<u64> {
        let now = now_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gets_one_line_and_the_next_line_counts_the_rest() {
        let gate = LogGate::new();
        assert_eq!(gate.pass(), Some(0));
        for _ in 0..1000 {
            assert_eq!(gate.pass(), None);
        }
        gate.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(gate.pass(), Some(1000));
    }
}
