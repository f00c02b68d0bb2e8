//! Throttles against password guessing and mass registration, kept in memory.
//!
//! Why: without them one address could try 500 passwords in 13 s and register 642 accounts in
//! 30 s. Three checks run before any password is hashed, so a throttled attempt costs the
//! server almost nothing:
//! - failed logins per client address back off exponentially ([`Backoffs`]), checked first, so
//!   an attacker is stopped at their own address;
//! - failed logins per account back off too, but allow ten times as many failures and never lock
//!   for more than a minute: an attacker spread over many addresses is slowed down, yet cannot
//!   lock the real user out of their own account for long;
//! - registrations per address draw on a token bucket ([`Buckets`]).
//!
//! Invariants: every map is bounded ([`MAX_ENTRIES`]) and entries expire, so a flood of distinct
//! addresses or names cannot grow memory without end; a lock is never held across an await.
//! IPv6 clients are keyed by their /64, which one host usually owns whole.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::sync::lock;

/// Most entries one map keeps. At about 100 bytes each, 100,000 entries are ~10 MB.
pub(crate) const MAX_ENTRIES: usize = 100_000;

/// The first lock after the free failures lasts this long; each further failure doubles it.
const FIRST_LOCK: Duration = Duration::from_secs(1);

/// How many more failures an account tolerates than an address.
const ACCOUNT_FAILURE_FACTOR: u32 = 10;

/// The longest an account (as opposed to an address) is locked.
const ACCOUNT_MAX_LOCK: Duration = Duration::from_secs(60);

/// The key an address is throttled under: IPv4 as is, IPv6 by its /64.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// Removes entries until `map` has room for one more: the dead ones first, then, if an attacker
/// keeps it full of live ones, an arbitrary eighth (which forgets their throttling early; the
/// alternative, refusing new keys, would lock out legitimate clients instead).
fn make_room<K: Eq + Hash, V>(map: &mut HashMap<K, V>, dead: impl Fn(&V) -> bool) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    map.retain(|_, v| !dead(v));
    if map.len() >= MAX_ENTRIES {
        let mut n = 0usize;
        map.retain(|_, _| {
            n += 1;
            n % 8 != 0
        });
    }
}

#[derive(Debug)]
struct Failures {
    count: u32,
    locked_until: Instant,
    last: Instant,
}

impl Failures {
    /// Unlocked and quiet for `max_lock`: nothing to remember any more.
    fn forgotten(&self, now: Instant, max_lock: Duration) -> bool {
        now >= self.locked_until && now.duration_since(self.last) >= max_lock
    }
}

/// Failed attempts per key with exponential backoff: `free` failures pass, then each failure
/// locks the key for [`FIRST_LOCK`] doubled per further failure, up to `max_lock`. A key with no
/// failure for `max_lock` after its lock ended is forgotten.
pub(crate) struct Backoffs<K> {
    entries: HashMap<K, Failures>,
    free: u32,
    max_lock: Duration,
}

impl<K: Eq + Hash> Backoffs<K> {
    pub(crate) fn new(free: u32, max_lock: Duration) -> Backoffs<K> {
        Backoffs {
            entries: HashMap::new(),
            free,
            max_lock,
        }
    }

    /// How long `key` is still locked, if it is.
    pub(crate) fn locked_for<Q>(&self, key: &Q, now: Instant) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let failures = self.entries.get(key)?;
        (failures.locked_until > now).then(|| failures.locked_until - now)
    }

    /// Records a failure for `key`.
    pub(crate) fn fail(&mut self, key: K, now: Instant) {
        let max_lock = self.max_lock;
        if !self.entries.contains_key(&key) {
            make_room(&mut self.entries, |f| f.forgotten(now, max_lock));
        }
        let failures = self.entries.entry(key).or_insert(Failures {
            count: 0,
            locked_until: now,
            last: now,
        });
        if failures.forgotten(now, max_lock) {
            failures.count = 0;
        }
        failures.count = failures.count.saturating_add(1);
        failures.last = now;
        if failures.count > self.free {
            let doublings = (failures.count - self.free - 1).min(30);
            let lock = FIRST_LOCK.saturating_mul(1 << doublings).min(max_lock);
            failures.locked_until = now + lock;
        }
    }

    /// Forgets `key`'s failures.
    pub(crate) fn clear<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries.remove(key);
    }

    /// Drops entries nothing remembers any more.
    fn expire(&mut self, now: Instant) {
        let max_lock = self.max_lock;
        self.entries.retain(|_, f| !f.forgotten(now, max_lock));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// The tokens at `now`.
    fn tokens_at(&self, now: Instant, burst: f64, per_sec: f64) -> f64 {
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * per_sec).min(burst)
    }
}

/// A token bucket per key: `burst` tokens, refilled at `per_hour`. A full bucket is the same as
/// none, so full ones are dropped.
pub(crate) struct Buckets<K> {
    entries: HashMap<K, Bucket>,
    burst: f64,
    per_sec: f64,
}

impl<K: Eq + Hash> Buckets<K> {
    pub(crate) fn new(per_hour: u32) -> Buckets<K> {
        Buckets {
            entries: HashMap::new(),
            burst: f64::from(per_hour),
            per_sec: f64::from(per_hour) / 3600.0,
        }
    }

    /// Takes a token for `key`, or says how long until one is available.
    pub(crate) fn take(&mut self, key: K, now: Instant) -> Result<(), Duration> {
        let (burst, per_sec) = (self.burst, self.per_sec);
        if !self.entries.contains_key(&key) {
            make_room(&mut self.entries, |b| {
                b.tokens_at(now, burst, per_sec) >= burst
            });
        }
        let entry = self.entries.entry(key).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let tokens = entry.tokens_at(now, burst, per_sec);
        entry.updated = now;
        if tokens >= 1.0 {
            entry.tokens = tokens - 1.0;
            Ok(())
        } else {
            entry.tokens = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_sec))
        }
    }

    fn expire(&mut self, now: Instant) {
        let (burst, per_sec) = (self.burst, self.per_sec);
        self.entries
            .retain(|_, b| b.tokens_at(now, burst, per_sec) < burst);
    }
}

/// Why an authentication attempt is refused before hashing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Throttled {
    /// Too many failed logins from this address.
    Address(Duration),
    /// Too many failed logins for this account, from anywhere.
    Account(Duration),
    /// Too many registrations from this address.
    Registrations(Duration),
}

impl Throttled {
    /// The message for the client, with when to retry (rounded up to whole seconds).
    pub(crate) fn message(&self) -> String {
        let (what, wait) = match self {
            Throttled::Address(wait) => ("too many failed logins from your address", wait),
            Throttled::Account(wait) => ("too many failed logins for this account", wait),
            Throttled::Registrations(wait) => ("too many registrations from your address", wait),
        };
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        format!("{what}; retry in {seconds} s")
    }
}

/// The server's authentication throttles (see the module doc).
pub(crate) struct AuthThrottle {
    addresses: Mutex<Backoffs<IpAddr>>,
    accounts: Mutex<Backoffs<String>>,
    registrations: Option<Mutex<Buckets<IpAddr>>>,
}

impl AuthThrottle {
    pub(crate) fn new(config: &Config) -> AuthThrottle {
        let free = config.login_free_failures;
        AuthThrottle {
            addresses: Mutex::new(Backoffs::new(free, config.login_max_lock)),
            accounts: Mutex::new(Backoffs::new(
                free.saturating_mul(ACCOUNT_FAILURE_FACTOR),
                ACCOUNT_MAX_LOCK.min(config.login_max_lock),
            )),
            registrations: (config.registrations_per_ip_hour > 0)
                .then(|| Mutex::new(Buckets::new(config.registrations_per_ip_hour))),
        }
    }

    /// Whether a login for `account` (its user key; `None` for a name that cannot exist) from
    /// `ip` may be tried now: the address is checked first, so a client locked out by its own
    /// failures learns nothing about the account.
    pub(crate) fn check_login(&self, ip: IpAddr, account: Option<&str>) -> Result<(), Throttled> {
        let now = Instant::now();
        if let Some(wait) = lock(&self.addresses).locked_for(&address_key(ip), now) {
            return Err(Throttled::Address(wait));
        }
        match account.and_then(|account| lock(&self.accounts).locked_for(account, now)) {
            Some(wait) => Err(Throttled::Account(wait)),
            None => Ok(()),
        }
    }

    /// Records a failed login for `account` from `ip`. Only valid user names are remembered, so
    /// a key is at most 32 bytes however long the name a client sent.
    pub(crate) fn login_failed(&self, ip: IpAddr, account: Option<&str>) {
        let now = Instant::now();
        lock(&self.addresses).fail(address_key(ip), now);
        if let Some(account) = account {
            lock(&self.accounts).fail(account.to_owned(), now);
        }
    }

    /// Records a successful login: the account's failures are forgotten (the address's are not,
    /// or an attacker could reset their own backoff by logging in to an account of their own).
    pub(crate) fn login_succeeded(&self, account: &str) {
        lock(&self.accounts).clear(account);
    }

    /// Takes one registration attempt from `ip`'s allowance.
    pub(crate) fn check_registration(&self, ip: IpAddr) -> Result<(), Throttled> {
        match &self.registrations {
            None => Ok(()),
            Some(buckets) => lock(buckets)
                .take(address_key(ip), Instant::now())
                .map_err(Throttled::Registrations),
        }
    }

    /// Drops expired entries; the janitor calls it now and then.
    pub(crate) fn expire(&self) {
        let now = Instant::now();
        lock(&self.addresses).expire(now);
        lock(&self.accounts).expire(now);
        if let Some(buckets) = &self.registrations {
            lock(buckets).expire(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_the_free_failures_and_doubles_up_to_the_cap() {
        let mut backoffs = Backoffs::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        for _ in 0..3 {
            backoffs.fail("k", t0);
        }
        assert_eq!(backoffs.locked_for(&"k", t0), None);
        backoffs.fail("k", t0);
        assert_eq!(backoffs.locked_for(&"k", t0), Some(Duration::from_secs(1)));
        backoffs.fail("k", t0);
        assert_eq!(backoffs.locked_for(&"k", t0), Some(Duration::from_secs(2)));
        for _ in 0..40 {
            backoffs.fail("k", t0);
        }
        assert_eq!(backoffs.locked_for(&"k", t0), Some(Duration::from_secs(5)));
        assert_eq!(backoffs.locked_for(&"other", t0), None);
        // Quiet for the cap after the lock ends: forgotten, and free failures again.
        let later = t0 + Duration::from_secs(11);
        backoffs.expire(later);
        assert_eq!(backoffs.len(), 0);
        backoffs.fail("k", later);
        assert_eq!(backoffs.locked_for(&"k", later), None);
    }

    #[test]
    fn maps_stay_bounded() {
        let mut backoffs = Backoffs::new(0, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 1000) {
            backoffs.fail(i, now);
        }
        assert!(backoffs.len() <= MAX_ENTRIES);
        let mut buckets = Buckets::new(1);
        for i in 0..(MAX_ENTRIES as u32 + 1000) {
            let _ = buckets.take(i, now);
        }
        assert!(buckets.entries.len() <= MAX_ENTRIES);
    }

    #[test]
    fn buckets_refill_per_hour_and_full_ones_expire() {
        let mut buckets = Buckets::new(2);
        let t0 = Instant::now();
        assert!(buckets.take("ip", t0).is_ok());
        assert!(buckets.take("ip", t0).is_ok());
        let wait = buckets.take("ip", t0).unwrap_err();
        assert_eq!(wait.as_secs(), 1800);
        assert!(buckets.take("ip", t0 + Duration::from_secs(1800)).is_ok());
        buckets.expire(t0 + Duration::from_secs(3 * 3600));
        assert!(buckets.entries.is_empty());
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
