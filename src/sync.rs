//! Locking that survives a panic elsewhere.
//!
//! Every `std::sync::Mutex` in chatd guards data that stays consistent between statements (no
//! invariant is broken across a panic point while the lock is held), and connection tasks catch
//! their own panics. So a poisoned lock carries no information worth dying for: one panicking
//! connection must not take every other user of a room, outbox or table down with it. This is
//! the one place that decision is made.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning (see the module doc for why that is sound here).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
