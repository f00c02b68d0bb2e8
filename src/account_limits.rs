//! Limits on what one account may send, across all of its connections.
//!
//! Why: the per-connection bucket alone let one account on 20 connections write 210 MB in 32 s.
//! Each account has a token bucket for `send` shared by its connections (`--account-rate`,
//! `--account-burst`) and a daily storage quota (`--account-quota-mb`: bytes of message text
//! accepted per UTC day).
//!
//! Invariants: one short lock per `send` and no allocation except an account's first send of
//! the day (nothing per delivered message, nothing on the commit thread); the map is bounded
//! ([`crate::throttle::MAX_ENTRIES`]) and entries die with their day, so usage is kept in memory
//! only: a restart, or eviction from a full map, starts an account's day afresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::Config;
use crate::sync::lock;
use crate::throttle::MAX_ENTRIES;

const DAY_MS: u64 = 24 * 3600 * 1000;

/// Why a send is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendRefused {
    /// The account's connections together send faster than the account rate.
    Rate,
    /// The account stored its daily quota of text today.
    Quota {
        /// The quota in MiB, for the message.
        mib: u64,
    },
}

impl SendRefused {
    /// The message for the client.
    pub(crate) fn message(&self) -> String {
        match self {
            SendRefused::Rate => "your account is sending too fast (all its connections together)"
                .into(),
            SendRefused::Quota { mib } => format!(
                "your account reached its daily quota of {mib} MiB of messages; it resets at 00:00 UTC"
            ),
        }
    }
}

struct Usage {
    tokens: f64,
    updated: Instant,
    day: u64,
    bytes: u64,
}

/// Send rate and quota per account (see the module doc).
pub(crate) struct AccountLimits {
    usage: Mutex<HashMap<String, Usage>>,
    rate: f64,
    burst: f64,
    quota_bytes: Option<u64>,
}

impl AccountLimits {
    pub(crate) fn new(config: &Config) -> AccountLimits {
        AccountLimits {
            usage: Mutex::new(HashMap::new()),
            rate: f64::from(config.account_rate),
            burst: f64::from(config.account_burst),
            quota_bytes: (config.account_quota_mb > 0)
                .then(|| config.account_quota_mb.saturating_mul(1024 * 1024)),
        }
    }

    /// Charges one send of `bytes` of text to `account` (its user key) at `now_ms`, or refuses
    /// it. A refused send is not charged.
    pub(crate) fn charge(
        &self,
        account: &str,
        bytes: usize,
        now_ms: u64,
    ) -> Result<(), SendRefused> {
        let now = Instant::now();
        let day = now_ms / DAY_MS;
        let mut usage = lock(&self.usage);
        let usage = match usage.get_mut(account) {
            Some(usage) => usage,
            None => {
                if usage.len() >= MAX_ENTRIES {
                    usage.retain(|_, u| u.day == day);
                }
                if usage.len() >= MAX_ENTRIES {
                    let mut n = 0usize;
                    usage.retain(|_, _| {
                        n += 1;
                        n % 8 != 0
                    });
                }
                usage.entry(account.to_owned()).or_insert(Usage {
                    tokens: self.burst,
                    updated: now,
                    day,
                    bytes: 0,
                })
            }
        };
        let elapsed = now.duration_since(usage.updated).as_secs_f64();
        usage.tokens = (usage.tokens + elapsed * self.rate).min(self.burst);
        usage.updated = now;
        if usage.day != day {
            usage.day = day;
            usage.bytes = 0;
        }
        if usage.tokens < 1.0 {
            return Err(SendRefused::Rate);
        }
        let bytes = bytes as u64;
        if let Some(quota) = self.quota_bytes {
            if usage.bytes.saturating_add(bytes) > quota {
                return Err(SendRefused::Quota {
                    mib: quota / (1024 * 1024),
                });
            }
        }
        usage.tokens -= 1.0;
        usage.bytes = usage.bytes.saturating_add(bytes);
        Ok(())
    }

    /// Drops the usage of days gone by; the janitor calls it now and then.
    pub(crate) fn expire(&self, now_ms: u64) {
        let day = now_ms / DAY_MS;
        lock(&self.usage).retain(|_, u| u.day == day);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn limits(rate: u32, burst: u32, quota_mb: u64) -> AccountLimits {
        let mut config = Config::new(([127, 0, 0, 1], 0).into(), PathBuf::from("unused"));
        config.account_rate = rate;
        config.account_burst = burst;
        config.account_quota_mb = quota_mb;
        AccountLimits::new(&config)
    }

    #[test]
    fn the_bucket_is_per_account() {
        let limits = limits(1, 3, 0);
        for _ in 0..3 {
            assert_eq!(limits.charge("alice", 10, 0), Ok(()));
        }
        assert_eq!(limits.charge("alice", 10, 0), Err(SendRefused::Rate));
        assert_eq!(limits.charge("bob", 10, 0), Ok(()));
    }

    #[test]
    fn the_quota_counts_bytes_per_day_and_refusals_cost_nothing() {
        let limits = limits(1000, 1000, 1);
        let mib = 1024 * 1024;
        assert_eq!(limits.charge("alice", mib - 10, 0), Ok(()));
        assert_eq!(
            limits.charge("alice", 11, 0),
            Err(SendRefused::Quota { mib: 1 })
        );
        assert_eq!(limits.charge("alice", 10, 0), Ok(()));
        assert_eq!(limits.charge("alice", 1, DAY_MS), Ok(()), "a new day");
        limits.expire(2 * DAY_MS);
        assert!(lock(&limits.usage).is_empty());
    }
}
