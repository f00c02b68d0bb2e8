//! Passwords and session tokens.
//!
//! Passwords are hashed with argon2id (19 MiB, 2 passes: OWASP's recommendation). Hashing is
//! deliberately slow, so it runs on a few dedicated threads (one per core by default), never on
//! the executor. The job queue is bounded: a flood of logins is refused at once (`Busy`) instead
//! of queueing for longer than any client waits. Each hashing thread allocates argon2's working
//! memory once and reuses it. Allocating it per hash made glibc keep a 19 MiB arena for every
//! thread that ever hashed (measured: 6 MB → 376 MB after 20 registrations). Logins for unknown
//! users cost the same hash, so their timing does not reveal which names exist. Tokens are 256
//! random bits from the OS; only their SHA-256 is stored.
//!
//! The queue is shared fairly: one client address (IPv6: its /64) may have only a few jobs queued
//! or running at once, so a login flood from one address is refused at its own door instead of
//! filling the queue and turning everyone else's logins into `rate_limited`. The count per address
//! lives only while its jobs do, so that map is bounded by the queue's capacity.

use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use crate::throttle::address_key;

/// Errors from hashing.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Too many hashes are already waiting: the caller should retry later.
    #[error("too many logins in progress; retry in a few seconds")]
    Busy,
    /// The OS random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Random(String),
    /// argon2 refused the input.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(bytes)
}

/// Stored hashes asking for more than this many times the default memory are refused rather
/// than computed: a tampered database must not make one login allocate gigabytes.
const MAX_MEMORY_FACTOR: usize = 4;

/// argon2's working memory, allocated once and reused for every hash on one thread.
struct Scratch(Vec<Block>);

impl Scratch {
    fn new() -> Scratch {
        Scratch(vec![Block::default(); Params::default().block_count()])
    }

    fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.0.len() < count {
            self.0.resize(count, Block::default());
        }
        &mut self.0[..count]
    }

    /// Hashes `password` with a fresh salt into a PHC string.
    fn hash(&mut self, password: &str) -> Result<String, AuthError> {
        let failed = |e: &dyn std::fmt::Display| AuthError::Hash(e.to_string());
        let salt = random_bytes::<16>()?;
        let argon = Argon2::default();
        let params = argon.params();
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        argon
            .hash_password_into_with_memory(
                password.as_bytes(),
                &salt,
                &mut out,
                self.blocks(params.block_count()),
            )
            .map_err(|e| failed(&e))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| failed(&e))?;
        let output = Output::new(&out).map_err(|e| failed(&e))?;
        Ok(format!(
            "${}$v={}$m={},t={},p={}${}${}",
            Algorithm::Argon2id.ident(),
            u32::from(Version::V0x13),
            params.m_cost(),
            params.t_cost(),
            params.p_cost(),
            salt.as_str(),
            output
        ))
    }

    /// Checks `password` against a PHC string. A malformed or unreasonable hash never matches.
    fn verify(&mut self, password: &str, phc: &str) -> bool {
        let Ok(hash) = PasswordHash::new(phc) else {
            return false;
        };
        let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
            Algorithm::try_from(hash.algorithm),
            Params::try_from(&hash),
            hash.salt,
            hash.hash,
        ) else {
            return false;
        };
        let version = match hash.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(version)) => version,
            Some(Err(_)) => return false,
        };
        if params.block_count() > MAX_MEMORY_FACTOR * Params::default().block_count() {
            tracing::warn!("refusing a stored password hash with unreasonable memory parameters");
            return false;
        }
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
            return false;
        };
        let mut out = vec![0u8; expected.len()];
        let count = params.block_count();
        let argon = Argon2::new(algorithm, version, params);
        argon
            .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, self.blocks(count))
            .is_ok()
            && Output::new(&out).is_ok_and(|out| out == expected)
    }
}

/// Hashes a password into a PHC string (blocking: tens of milliseconds). For one-off use,
/// such as the admin CLI; the server hashes through [`Passwords`].
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    Scratch::new().hash(password)
}

enum Job {
    Hash {
        password: String,
        reply: async_channel::Sender<Result<String, AuthError>>,
        _slot: Option<AddressSlot>,
    },
    Verify {
        password: String,
        phc: Option<String>,
        reply: async_channel::Sender<bool>,
        _slot: Option<AddressSlot>,
    },
}

/// Jobs queued or running per client address.
struct InFlight {
    counts: Mutex<HashMap<IpAddr, u32>>,
    per_address: u32,
}

/// One job's place in its address's count, given back when the job is dropped (done, or
/// discarded with the queue).
struct AddressSlot {
    in_flight: Arc<InFlight>,
    address: IpAddr,
}

impl InFlight {
    fn enter(self: &Arc<InFlight>, from: IpAddr) -> Result<AddressSlot, AuthError> {
        let address = address_key(from);
        let mut counts = lock(&self.counts);
        let count = counts.entry(address).or_insert(0);
        if *count >= self.per_address {
            return Err(AuthError::Busy);
        }
        *count += 1;
        Ok(AddressSlot {
            in_flight: self.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.in_flight.counts);
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// The server's password hashing: dedicated threads behind a bounded queue.
pub struct Passwords {
    jobs: async_channel::Sender<Job>,
    in_flight: Option<Arc<InFlight>>,
}

impl Passwords {
    /// `threads` hashing threads (each holding 19 MiB once it has hashed), at most 64 jobs per
    /// thread waiting, and at most `per_address` of them from one client address (0: no limit).
    pub fn new(threads: usize, per_address: u32) -> Passwords {
        let threads = threads.max(1);
        let (mut passwords, queue) = Passwords::queue(threads * 64);
        passwords.in_flight = (per_address > 0).then(|| {
            Arc::new(InFlight {
                counts: Mutex::new(HashMap::new()),
                per_address,
            })
        });
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("chatd-hash-{i}"))
                .spawn(move || work(&queue))
                .expect("spawning a password hashing thread");
        }
        passwords
    }

    /// The job queue without workers; the workers (or a test) take jobs from the receiver.
    fn queue(capacity: usize) -> (Passwords, async_channel::Receiver<Job>) {
        let (jobs, queue) = async_channel::bounded(capacity);
        (
            Passwords {
                jobs,
                in_flight: None,
            },
            queue,
        )
    }

    fn submit(&self, job: Job) -> Result<(), AuthError> {
        self.jobs.try_send(job).map_err(|_| AuthError::Busy)
    }

    /// A place in the queue for a job from `from`, if that address has not used up its share.
    fn slot(&self, from: IpAddr) -> Result<Option<AddressSlot>, AuthError> {
        self.in_flight.as_ref().map(|f| f.enter(from)).transpose()
    }

    /// Hashes `password` for a client at `from`.
    pub async fn hash(&self, from: IpAddr, password: String) -> Result<String, AuthError> {
        let (reply, answer) = async_channel::bounded(1);
        self.submit(Job::Hash {
            password,
            reply,
            _slot: self.slot(from)?,
        })?;
        answer
            .recv()
            .await
            .unwrap_or_else(|_| Err(AuthError::Hash("the hashing thread stopped".into())))
    }

    /// Checks `password` from a client at `from` against `phc`, or spends the same time hashing
    /// when there is no such user (then it always fails).
    pub async fn verify(
        &self,
        from: IpAddr,
        password: String,
        phc: Option<String>,
    ) -> Result<bool, AuthError> {
        let (reply, answer) = async_channel::bounded(1);
        self.submit(Job::Verify {
            password,
            phc,
            reply,
            _slot: self.slot(from)?,
        })?;
        Ok(answer.recv().await.unwrap_or(false))
    }
}

/// A hashing thread: runs jobs until the server drops its [`Passwords`].
fn work(jobs: &async_channel::Receiver<Job>) {
    let mut scratch: Option<Scratch> = None;
    while let Ok(job) = jobs.recv_blocking() {
        let scratch = scratch.get_or_insert_with(Scratch::new);
        // A login abandoned while queued (its deadline passed, the client left) costs nothing:
        // each arm checks whether anyone still waits for the answer.
        match job {
            Job::Hash {
                password, reply, ..
            } => {
                if !reply.is_closed() {
                    let _ = reply.try_send(scratch.hash(&password));
                }
            }
            Job::Verify {
                password,
                phc,
                reply,
                ..
            } => {
                if !reply.is_closed() {
                    let matches = match phc {
                        Some(phc) => scratch.verify(&password, &phc),
                        None => {
                            let _ = scratch.hash(&password);
                            false
                        }
                    };
                    let _ = reply.try_send(matches);
                }
            }
        }
    }
}

/// A new random session token and the hash it is stored under.
pub fn new_token() -> Result<(String, [u8; 32]), AuthError> {
    let token = URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// The key a token is stored under.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordVerifier;

    #[test]
    fn hashes_verify_differ_by_salt_and_are_standard_phc() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert!(Scratch::new().verify("correct horse", &a));
        assert!(!Scratch::new().verify("wrong horse", &a));
        assert!(!Scratch::new().verify("x", "not a phc string"));
        // The argon2 crate's own verifier accepts our strings: they are ordinary PHC hashes.
        let parsed = PasswordHash::new(&a).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
    }

    #[test]
    fn hashes_with_unreasonable_memory_are_refused() {
        let greedy = "$argon2id$v=19$m=2000000,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(!Scratch::new().verify("anything", greedy));
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let (passwords, _queue) = Passwords::queue(2);
        let job = || Job::Verify {
            password: "p".into(),
            phc: None,
            reply: async_channel::bounded(1).0,
            _slot: None,
        };
        assert!(passwords.submit(job()).is_ok());
        assert!(passwords.submit(job()).is_ok());
        assert!(matches!(passwords.submit(job()), Err(AuthError::Busy)));
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share_of_the_queue() {
        let (mut passwords, _queue) = Passwords::queue(100);
        passwords.in_flight = Some(Arc::new(InFlight {
            counts: Mutex::new(HashMap::new()),
            per_address: 2,
        }));
        let flooder: IpAddr = "10.0.0.1".parse().unwrap();
        let slots = [
            passwords.slot(flooder).unwrap(),
            passwords.slot(flooder).unwrap(),
        ];
        assert!(matches!(passwords.slot(flooder), Err(AuthError::Busy)));
        assert!(passwords.slot("10.0.0.2".parse().unwrap()).is_ok());
        drop(slots);
        assert!(passwords.slot(flooder).is_ok());
        let in_flight = passwords.in_flight.as_ref().unwrap();
        assert!(
            lock(&in_flight.counts).is_empty(),
            "finished jobs leave no entry"
        );
    }

    #[test]
    fn the_pool_answers_hash_and_verify() {
        let passwords = Passwords::new(1, 4);
        let me: IpAddr = "127.0.0.1".parse().unwrap();
        let phc = smol::block_on(passwords.hash(me, "hunter2hunter2".into())).unwrap();
        assert!(
            smol::block_on(passwords.verify(me, "hunter2hunter2".into(), Some(phc.clone())))
                .unwrap()
        );
        assert!(!smol::block_on(passwords.verify(me, "nope".into(), Some(phc))).unwrap());
        assert!(!smol::block_on(passwords.verify(me, "nope".into(), None)).unwrap());
    }

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let (t1, h1) = new_token().unwrap();
        let (t2, _) = new_token().unwrap();
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), 43);
        assert_eq!(token_hash(&t1), h1);
    }
}
