//! Who may hold a connection: limits per server, per address and per account.
//!
//! A socket is admitted at accept, before a byte is read, and holds a [`Slot`] until its task
//! ends; it starts unauthenticated and becomes its account's when `auth` succeeds. Refusals at
//! accept are answered `503`; an account over its limit is refused at login (see
//! `session::authenticate`).
//!
//! Invariants:
//! - The counts are exactly the live slots (a slot uncounts itself when dropped), so they cannot
//!   drift however a connection ends.
//! - Maps keyed by address or account hold an entry only while its count is above zero, so they
//!   never hold more entries than there are open sockets (at most `--max-connections`): bounded,
//!   with nothing to expire.
//! - Unauthenticated sockets (HTTP requests, and WebSockets before `auth` succeeds) never hold
//!   more than `--max-connections` − `--reserved-connections` slots, so sockets that never log
//!   in cannot crowd out authenticated users.
//! - IPv6 addresses count by their /64 (one subscriber's usual allocation), IPv4-mapped IPv6
//!   addresses as IPv4.
//! - The lock is held for a few map operations, never across an await.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::sync::lock;

/// The limits, from the configuration.
pub(crate) struct Limits {
    open: usize,
    unauthenticated: usize,
    per_address: usize,
    unauthenticated_per_address: usize,
    per_account: usize,
}

impl Limits {
    pub(crate) fn from_config(config: &Config) -> Limits {
        Limits {
            open: config.max_connections,
            unauthenticated: config
                .max_connections
                .saturating_sub(config.reserved_connections()),
            per_address: config.max_connections_per_ip,
            unauthenticated_per_address: config.max_unauthenticated_per_ip,
            per_account: config.max_connections_per_account,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `--max-connections` sockets are open.
    Server,
    /// Unauthenticated sockets hold every slot not reserved for authenticated ones.
    Unauthenticated,
    /// The address holds `--max-connections-per-ip` sockets.
    Address,
    /// The address holds `--max-unauthenticated-per-ip` unauthenticated sockets.
    AddressUnauthenticated,
    /// The account holds `--max-connections-per-account` connections.
    Account,
}

impl Refusal {
    /// Every refusal, for metrics and log gates (indexed by [`Refusal::index`]).
    pub(crate) const ALL: [Refusal; 5] = [
        Refusal::Server,
        Refusal::Unauthenticated,
        Refusal::Address,
        Refusal::AddressUnauthenticated,
        Refusal::Account,
    ];

    /// The metric label.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Server => "server_full",
            Refusal::Unauthenticated => "unauthenticated_full",
            Refusal::Address => "ip_full",
            Refusal::AddressUnauthenticated => "ip_unauthenticated_full",
            Refusal::Account => "account_full",
        }
    }

    /// Position in [`Refusal::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

#[derive(Default)]
struct PerAddress {
    open: usize,
    unauthenticated: usize,
}

#[derive(Default)]
struct Counts {
    open: usize,
    unauthenticated: usize,
    addresses: HashMap<IpAddr, PerAddress>,
    accounts: HashMap<Arc<str>, usize>,
}

/// The server's connection counts and limits.
pub(crate) struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// The address that per-address limits count.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Admits a new, unauthenticated socket from `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let address = address_key(ip);
        let limits = &self.limits;
        let mut counts = lock(&self.counts);
        if counts.open >= limits.open {
            return Err(Refusal::Server);
        }
        if counts.unauthenticated >= limits.unauthenticated {
            return Err(Refusal::Unauthenticated);
        }
        if let Some(held) = counts.addresses.get(&address) {
            if held.open >= limits.per_address {
                return Err(Refusal::Address);
            }
            if held.unauthenticated >= limits.unauthenticated_per_address {
                return Err(Refusal::AddressUnauthenticated);
            }
        }
        counts.open += 1;
        counts.unauthenticated += 1;
        let held = counts.addresses.entry(address).or_default();
        held.open += 1;
        held.unauthenticated += 1;
        Ok(Slot {
            admission: self.clone(),
            address,
            account: None,
        })
    }
}

/// One admitted socket's place in the counts; uncounts it when dropped.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    address: IpAddr,
    account: Option<Arc<str>>,
}

impl Slot {
    /// Counts this socket as `account`'s from now on, or refuses if the account already holds
    /// its limit (the socket then stays unauthenticated).
    pub(crate) fn authenticate(&mut self, account: &Arc<str>) -> Result<(), Refusal> {
        if self.account.is_some() {
            return Ok(());
        }
        let mut counts = lock(&self.admission.counts);
        let held = counts.accounts.get(account).copied().unwrap_or(0);
        if held >= self.admission.limits.per_account {
            return Err(Refusal::Account);
        }
        counts.accounts.insert(account.clone(), held + 1);
        counts.unauthenticated -= 1;
        if let Some(address) = counts.addresses.get_mut(&self.address) {
            address.unauthenticated -= 1;
        }
        drop(counts);
        self.account = Some(account.clone());
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.admission.counts);
        counts.open -= 1;
        let authenticated = match &self.account {
            Some(account) => {
                if let Some(held) = counts.accounts.get_mut(account) {
                    *held -= 1;
                    if *held == 0 {
                        counts.accounts.remove(account);
                    }
                }
                true
            }
            None => {
                counts.unauthenticated -= 1;
                false
            }
        };
        if let Some(held) = counts.addresses.get_mut(&self.address) {
            held.open -= 1;
            if !authenticated {
                held.unauthenticated -= 1;
            }
            if held.open == 0 {
                counts.addresses.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(
        open: usize,
        reserved: usize,
        per_ip: usize,
        unauth_per_ip: usize,
    ) -> Arc<Admission> {
        Arc::new(Admission::new(Limits {
            open,
            unauthenticated: open - reserved,
            per_address: per_ip,
            unauthenticated_per_address: unauth_per_ip,
            per_account: 2,
        }))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn limits_apply_per_address_and_maps_empty_when_sockets_close() {
        let admission = admission(100, 0, 3, 2);
        let a = admission.admit(ip("10.0.0.1")).unwrap();
        let mut b = admission.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.1")).err(),
            Some(Refusal::AddressUnauthenticated)
        );
        let other = admission.admit(ip("10.0.0.2")).unwrap();
        b.authenticate(&Arc::from("alice")).unwrap();
        let c = admission.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.1")).err(),
            Some(Refusal::Address)
        );
        drop((a, b, c, other));
        let counts = lock(&admission.counts);
        assert_eq!((counts.open, counts.unauthenticated), (0, 0));
        assert!(counts.addresses.is_empty() && counts.accounts.is_empty());
    }

    #[test]
    fn reserved_slots_are_only_for_authenticated_sockets() {
        let admission = admission(3, 1, 10, 10);
        let mut a = admission.admit(ip("10.0.0.1")).unwrap();
        let _b = admission.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.3")).err(),
            Some(Refusal::Unauthenticated)
        );
        a.authenticate(&Arc::from("alice")).unwrap();
        let _c = admission.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(admission.admit(ip("10.0.0.4")).err(), Some(Refusal::Server));
    }

    #[test]
    fn an_account_over_its_limit_is_refused_until_one_closes() {
        let admission = admission(100, 0, 100, 100);
        let alice: Arc<str> = Arc::from("alice");
        let mut first = admission.admit(ip("10.0.0.1")).unwrap();
        let mut second = admission.admit(ip("10.0.0.2")).unwrap();
        let mut third = admission.admit(ip("10.0.0.3")).unwrap();
        first.authenticate(&alice).unwrap();
        second.authenticate(&alice).unwrap();
        assert_eq!(third.authenticate(&alice), Err(Refusal::Account));
        drop(first);
        third.authenticate(&alice).unwrap();
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(address_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }
}
