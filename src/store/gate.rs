//! The write gate: whether the message log may take new writes right now, decided without ever
//! waiting for the disk.
//!
//! A full disk used to wedge the server: sled's flush could hang for good, or fail and leave
//! sled refusing every later write, while `/healthz` said all was well and every refused send
//! logged an ERROR line. The gate turns the disk's condition into a state that callers read with
//! one atomic load:
//!
//! - **Low space**: the data directory's file system has less than `--min-free-space` available
//!   (statvfs, read by the committer's watch thread every [`CHECK_INTERVAL`], never per
//!   message). Between readings each admitted message draws its estimated size on disk from a
//!   budget (free space minus the minimum at the last reading), so a burst cannot run through
//!   the headroom between two readings. The budget overestimates (it must stay safe), so free
//!   space can creep towards the minimum without crossing it while every message is refused for
//!   want of budget; a reading whose whole budget could not take a message the budget refused
//!   since the last one counts as low space too, so `/healthz` says why sends are refused. New
//!   messages are refused; repeats of a stored cid, reads, and admin deletions and prunes still
//!   work. Clears by itself once space returns.
//! - **Flush stalled**: a group commit (apply + fsync) has not returned within
//!   `--flush-timeout`. Everything that would wait for a flush is refused at once, and what is
//!   queued behind the stuck batch is answered with an error (see `commit.rs`). Clears when the
//!   stuck write returns.
//! - **Failed**: a group commit or a probe returned an error (sled reports ENOSPC or EIO once
//!   and then refuses every later write until the database is reopened). Writes are refused;
//!   the watch thread queues a probe (a small write and a flush) every [`PROBE_INTERVAL`], and
//!   the state clears when one succeeds.
//!
//! Invariants: a refusal is decided before anything is queued, so a refused write stores
//! nothing; the state only changes in [`WriteGate::check`] (one thread), which logs exactly one
//! line and counts one change per transition; callers never block here.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::sync::lock;

use super::StoreError;

/// How often the watch thread reads free space and looks at the running write.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// How often a failed log is probed with a small write and a flush.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// sled keeps about 1.8 bytes on disk per byte written (docs/STORAGE.md); rounding up keeps the
/// budget on the safe side.
const DISK_BYTES_PER_BYTE: i64 = 2;

/// Per-message bytes beyond the text: key, record header, cid entry, room record.
const MESSAGE_OVERHEAD: i64 = 128;

/// Why writes are (or are not) taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Condition {
    /// Writes are taken.
    Writable = 0,
    /// Less than the configured free space is left: new messages are refused.
    LowSpace = 1,
    /// A group commit has not returned within the flush timeout: writes are refused.
    FlushStalled = 2,
    /// The last group commit or probe failed: writes are refused until a probe succeeds.
    Failed = 3,
}

impl Condition {
    fn from_u8(value: u8) -> Condition {
        match value {
            1 => Condition::LowSpace,
            2 => Condition::FlushStalled,
            3 => Condition::Failed,
            _ => Condition::Writable,
        }
    }

    /// The name used in `/healthz` and as the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Writable => "ok",
            Condition::LowSpace => "low_space",
            Condition::FlushStalled => "flush_stalled",
            Condition::Failed => "write_failed",
        }
    }

    /// What a refused client is told.
    pub fn refusal(self) -> &'static str {
        match self {
            Condition::Writable => "the message was not stored; retry",
            Condition::LowSpace => {
                "the server is low on disk space; the message was not stored, retry later"
            }
            Condition::FlushStalled => {
                "the server's disk is not responding; the message was not stored, retry later"
            }
            Condition::Failed => {
                "the server cannot write to its disk; the message was not stored, retry later"
            }
        }
    }

    /// Every condition that refuses writes (for pre-registering metric labels).
    pub const REFUSING: [Condition; 3] = [
        Condition::LowSpace,
        Condition::FlushStalled,
        Condition::Failed,
    ];
}

/// Reads the bytes available to chatd on the data directory's file system.
pub type FreeSpaceProbe = Box<dyn Fn() -> std::io::Result<u64> + Send + Sync>;

/// The free-space reading for `dir`: statvfs's blocks available to unprivileged users.
pub fn statvfs_probe(dir: PathBuf) -> FreeSpaceProbe {
    Box::new(move || {
        let stat = rustix::fs::statvfs(&dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    })
}

/// Free space to keep, and how to read it.
pub struct Headroom {
    /// New messages are refused below this many available bytes (0: never).
    pub min_free: u64,
    /// Reads the available bytes.
    pub probe: FreeSpaceProbe,
}

/// See the module doc.
pub struct WriteGate {
    condition: AtomicU8,
    /// Bytes messages may still take before the next free-space reading.
    budget: AtomicI64,
    /// The largest cost the budget refused since the last reading (0: none).
    starved: AtomicI64,
    /// Milliseconds since `epoch`, plus one, at which the running group commit began; 0 when
    /// none runs.
    write_began: AtomicU64,
    /// Messages in the running group commit.
    writes_running: AtomicUsize,
    /// The last group commit or probe failed (and none succeeded since).
    write_failed: AtomicBool,
    /// A probe is queued and has not returned yet.
    probing: AtomicBool,
    last_probe: Mutex<Option<Instant>>,
    /// The error of the failed write, for the log line and `/healthz`.
    last_error: Mutex<String>,
    free_bytes: AtomicU64,
    epoch: Instant,
    flush_timeout: Duration,
    headroom: Option<Headroom>,
    metrics: Arc<Metrics>,
}

impl WriteGate {
    /// A gate that refuses writes only when a group commit takes longer than `flush_timeout`
    /// or fails, counted in metrics of its own (for benchmarks and tools that run a committer
    /// outside the server).
    pub fn without_headroom(flush_timeout: Duration) -> Arc<WriteGate> {
        WriteGate::new(Arc::new(Metrics::new()), flush_timeout, None)
    }

    /// A gate that refuses writes when a group commit takes longer than `flush_timeout` or
    /// fails, and, with `headroom`, when free space runs low.
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        flush_timeout: Duration,
        headroom: Option<Headroom>,
    ) -> Arc<WriteGate> {
        Arc::new(WriteGate {
            condition: AtomicU8::new(Condition::Writable as u8),
            budget: AtomicI64::new(i64::MAX),
            starved: AtomicI64::new(0),
            write_began: AtomicU64::new(0),
            writes_running: AtomicUsize::new(0),
            write_failed: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            last_probe: Mutex::new(None),
            last_error: Mutex::new(String::new()),
            free_bytes: AtomicU64::new(0),
            epoch: Instant::now(),
            flush_timeout,
            headroom,
            metrics,
        })
    }

    /// The current condition.
    pub fn condition(&self) -> Condition {
        Condition::from_u8(self.condition.load(Ordering::Relaxed))
    }

    /// Why writes are refused, for `/healthz`; None while they are taken.
    pub fn reason(&self) -> Option<String> {
        let condition = self.condition();
        let min_free = self.headroom.as_ref().map_or(0, |h| h.min_free);
        Some(match condition {
            Condition::Writable => return None,
            Condition::LowSpace => format!(
                "{} bytes free on the data directory, too close to --min-free-space {min_free} for new messages; they are refused",
                self.free_bytes.load(Ordering::Relaxed)
            ),
            Condition::FlushStalled => format!(
                "a database write has not returned for over {:?} (--flush-timeout); writes are refused",
                self.flush_timeout
            ),
            Condition::Failed => format!(
                "a database write failed ({}); writes are refused until a probe write succeeds",
                lock(&self.last_error)
            ),
        })
    }

    /// Lets a new message of `text_bytes` be queued, or refuses it (nothing is queued then).
    pub fn admit_message(&self, text_bytes: usize) -> Result<(), StoreError> {
        match self.condition() {
            Condition::Writable => {}
            refusing => return Err(self.refuse(refusing)),
        }
        if self.headroom.is_none() {
            return Ok(());
        }
        let cost = (text_bytes as i64).saturating_add(MESSAGE_OVERHEAD) * DISK_BYTES_PER_BYTE;
        if self.budget.fetch_sub(cost, Ordering::Relaxed) < cost {
            self.starved.fetch_max(cost, Ordering::Relaxed);
            return Err(self.refuse(Condition::LowSpace));
        }
        Ok(())
    }

    /// Lets work that only waits for the next flush (a repeated cid, a barrier) be queued, or
    /// refuses it while no flush can be expected soon. Low space does not refuse it.
    pub fn admit_flush_waiter(&self) -> Result<(), StoreError> {
        match self.condition() {
            Condition::Writable | Condition::LowSpace => Ok(()),
            refusing => Err(self.refuse(refusing)),
        }
    }

    fn refuse(&self, condition: Condition) -> StoreError {
        self.count_refusal(condition);
        StoreError::Unavailable { condition }
    }

    /// Counts a write refused for `condition` after it was queued (see `commit::fail_queued`).
    pub fn count_refusal(&self, condition: Condition) {
        self.metrics.write_refused(condition.as_str());
    }

    /// Called by the commit thread before it applies a batch of `messages`.
    pub fn write_began(&self, messages: usize) {
        let since = self.epoch.elapsed().as_millis() as u64;
        self.writes_running.store(messages, Ordering::Relaxed);
        self.write_began.store(since + 1, Ordering::Relaxed);
    }

    /// Messages in the group commit running now (0 if none runs).
    pub fn writes_running(&self) -> usize {
        self.writes_running.load(Ordering::Relaxed)
    }

    /// Called by the commit thread once the batch's apply and flush returned.
    pub fn write_ended(&self, result: Result<(), &StoreError>) {
        self.write_began.store(0, Ordering::Relaxed);
        self.writes_running.store(0, Ordering::Relaxed);
        match result {
            Ok(()) => self.write_failed.store(false, Ordering::Relaxed),
            Err(e) => self.record_failure(e),
        }
    }

    /// A backend read outside the commit thread failed. sled fails every operation after one
    /// of its background writes failed (a full disk), and a sender's cid lookup can meet that
    /// before the commit thread does: writes are refused from now on as after a failed group
    /// commit (until a probe succeeds), and so is the write that made the read.
    pub fn read_failed(&self, error: &StoreError) -> StoreError {
        self.record_failure(error);
        self.refuse(Condition::Failed)
    }

    fn record_failure(&self, error: &StoreError) {
        *lock(&self.last_error) = error.to_string();
        self.write_failed.store(true, Ordering::Relaxed);
    }

    /// Called by the commit thread once a probe returned (it also calls [`Self::write_ended`]).
    pub fn probe_ended(&self) {
        self.probing.store(false, Ordering::Relaxed);
    }

    /// Whether the watch thread should queue a probe now: after a failure, at most once per
    /// [`PROBE_INTERVAL`] and one at a time.
    pub fn probe_due(&self) -> bool {
        if self.condition() != Condition::Failed || self.probing.load(Ordering::Relaxed) {
            return false;
        }
        let mut last = lock(&self.last_probe);
        if last.is_some_and(|at| at.elapsed() < PROBE_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        self.probing.store(true, Ordering::Relaxed);
        true
    }

    /// Reads free space, looks at the running write, and moves to the condition they give.
    /// Returns the new condition if it changed. Only the watch thread calls this.
    pub fn check(&self) -> Option<Condition> {
        let low_space = self.read_free_space();
        let began = self.write_began.load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let stalled =
            began != 0 && now.saturating_sub(began) > self.flush_timeout.as_millis() as u64;
        let next = if stalled {
            Condition::FlushStalled
        } else if self.write_failed.load(Ordering::Relaxed) {
            Condition::Failed
        } else if low_space {
            Condition::LowSpace
        } else {
            Condition::Writable
        };
        let before = Condition::from_u8(self.condition.swap(next as u8, Ordering::Relaxed));
        if before == next {
            return None;
        }
        self.metrics.storage_state_changes.inc();
        match next {
            Condition::Writable => {
                tracing::warn!(was = before.as_str(), "database writes are taken again")
            }
            _ => tracing::error!(
                state = next.as_str(),
                reason = self.reason().unwrap_or_default(),
                "database writes are refused"
            ),
        }
        Some(next)
    }

    /// Takes a free-space reading, refills the budget, and says whether space is below the
    /// minimum, or too close to it for a message the budget refused since the last reading.
    /// Leaving low space needs a sixteenth of the minimum more, so a server hovering at the
    /// threshold does not flap between states.
    fn read_free_space(&self) -> bool {
        let Some(headroom) = &self.headroom else {
            return false;
        };
        let free = match (headroom.probe)() {
            Ok(free) => free,
            Err(e) => {
                // Unknown free space must not stop a server whose disk works: the flush watchdog
                // still catches a full disk.
                tracing::debug!(error = %e, "reading free space failed");
                self.budget.store(i64::MAX, Ordering::Relaxed);
                return false;
            }
        };
        self.free_bytes.store(free, Ordering::Relaxed);
        self.metrics.disk_free_bytes.set(free as i64);
        let spare = free as i64 - headroom.min_free.min(i64::MAX as u64) as i64;
        self.budget.store(spare, Ordering::Relaxed);
        let starved = self.starved.swap(0, Ordering::Relaxed);
        let was_low = self.condition() == Condition::LowSpace;
        let needed = if was_low {
            headroom.min_free.saturating_add(headroom.min_free / 16)
        } else {
            headroom.min_free
        };
        free < needed || spare < starved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate_with_free_space(
        min_free: u64,
        flush_timeout: Duration,
    ) -> (Arc<WriteGate>, Arc<AtomicU64>) {
        let free = Arc::new(AtomicU64::new(u64::MAX / 2));
        let reading = free.clone();
        let gate = WriteGate::new(
            Arc::new(Metrics::new()),
            flush_timeout,
            Some(Headroom {
                min_free,
                probe: Box::new(move || Ok(reading.load(Ordering::SeqCst))),
            }),
        );
        (gate, free)
    }

    fn is_refused(result: Result<(), StoreError>, condition: Condition) -> bool {
        matches!(result, Err(StoreError::Unavailable { condition: c }) if c == condition)
    }

    #[test]
    fn low_space_refuses_new_messages_but_not_flush_waiters_and_clears_when_space_returns() {
        let (gate, free) = gate_with_free_space(1_000_000, Duration::from_secs(5));
        free.store(900_000, Ordering::SeqCst);
        assert_eq!(gate.check(), Some(Condition::LowSpace));
        assert!(is_refused(gate.admit_message(10), Condition::LowSpace));
        assert!(
            gate.admit_flush_waiter().is_ok(),
            "a repeated cid still gets its ack"
        );
        assert!(gate.reason().unwrap().contains("900000"));
        // Just above the minimum is not enough to leave: no flapping at the threshold.
        free.store(1_010_000, Ordering::SeqCst);
        assert_eq!(gate.check(), None);
        free.store(2_000_000, Ordering::SeqCst);
        assert_eq!(gate.check(), Some(Condition::Writable));
        assert!(gate.admit_message(10).is_ok());
        assert_eq!(gate.check(), None, "one change is reported once");
    }

    #[test]
    fn the_budget_refuses_a_burst_between_two_readings() {
        let (gate, free) = gate_with_free_space(1_000_000, Duration::from_secs(5));
        free.store(1_100_000, Ordering::SeqCst);
        assert_eq!(gate.check(), None, "above the minimum");
        // 100,000 spare bytes; each 4,000-byte text costs (4000 + 128) × 2.
        let admitted = (0..100)
            .take_while(|_| gate.admit_message(4000).is_ok())
            .count();
        assert_eq!(admitted, 100_000 / 8256);
        assert_eq!(
            gate.condition(),
            Condition::Writable,
            "the state moves only on a reading"
        );
        free.store(5_000_000, Ordering::SeqCst);
        gate.check();
        assert!(
            gate.admit_message(4000).is_ok(),
            "a new reading refills the budget"
        );
    }

    #[test]
    fn a_budget_too_small_for_a_refused_message_after_a_new_reading_is_low_space() {
        let (gate, free) = gate_with_free_space(1_000_000, Duration::from_secs(5));
        free.store(1_010_000, Ordering::SeqCst);
        assert_eq!(gate.check(), None, "above the minimum");
        // 10,000 spare bytes take one 4,000-byte text (8,256), not a second.
        assert!(gate.admit_message(4000).is_ok());
        assert!(is_refused(gate.admit_message(4000), Condition::LowSpace));
        // The next reading has barely moved: no budget would take that message.
        free.store(1_005_000, Ordering::SeqCst);
        assert_eq!(gate.check(), Some(Condition::LowSpace));
        assert!(gate.reason().unwrap().contains("1005000"));
        assert!(
            is_refused(gate.admit_message(10), Condition::LowSpace),
            "small messages are refused too while low"
        );
        // Space comes back above the minimum plus a sixteenth: taken again.
        free.store(1_100_000, Ordering::SeqCst);
        assert_eq!(gate.check(), Some(Condition::Writable));
        assert!(gate.admit_message(4000).is_ok());
    }

    #[test]
    fn without_headroom_space_is_never_read_or_refused() {
        let gate = WriteGate::new(Arc::new(Metrics::new()), Duration::from_secs(5), None);
        for _ in 0..1000 {
            assert!(gate.admit_message(4000).is_ok());
        }
        assert_eq!(gate.check(), None);
    }

    #[test]
    fn a_write_past_the_timeout_stalls_writes_until_it_returns() {
        let (gate, _free) = gate_with_free_space(0, Duration::ZERO);
        gate.write_began(1);
        let began = Instant::now();
        // The clock has millisecond steps: wait for the next one.
        while gate.check().is_none() {
            assert!(began.elapsed() < Duration::from_secs(5), "never stalled");
            std::thread::yield_now();
        }
        assert_eq!(gate.condition(), Condition::FlushStalled);
        assert!(is_refused(gate.admit_message(1), Condition::FlushStalled));
        assert!(is_refused(
            gate.admit_flush_waiter(),
            Condition::FlushStalled
        ));
        gate.write_ended(Ok(()));
        assert_eq!(gate.check(), Some(Condition::Writable));
    }

    #[test]
    fn a_failed_write_refuses_until_a_probe_succeeds() {
        let (gate, _free) = gate_with_free_space(0, Duration::from_secs(5));
        assert!(!gate.probe_due(), "no probe while writes work");
        gate.write_ended(Err(&StoreError::Stopped));
        assert_eq!(gate.check(), Some(Condition::Failed));
        assert!(gate.reason().unwrap().contains("shutting down"));
        assert!(is_refused(gate.admit_message(1), Condition::Failed));
        assert!(gate.probe_due());
        assert!(!gate.probe_due(), "one probe at a time");
        gate.write_ended(Err(&StoreError::Stopped));
        gate.probe_ended();
        assert!(!gate.probe_due(), "at most one probe per interval");
        assert_eq!(gate.check(), None, "still failed");
        gate.write_ended(Ok(()));
        gate.probe_ended();
        assert_eq!(gate.check(), Some(Condition::Writable));
    }
}
