//! Passwords and session tokens.
//!
//! Passwords are hashed with argon2id (19 MiB, 2 passes: OWASP's recommendation). Hashing is
//! deliberately slow, so it runs on the blocking pool, never on executor threads, and a
//! semaphore bounds how many run at once: a flood of logins queues up instead of starving chat
//! of CPU or memory. Logins for unknown users verify against a dummy hash so their timing does
//! not reveal which names exist. Tokens are 256 random bits from the OS; only their SHA-256 is
//! stored.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_lock::Semaphore;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

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

/// Hashes a password into a PHC string (blocking: tens of milliseconds).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a password against a PHC string (blocking). A malformed hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("dummy password for timing").unwrap_or_default())
}

/// Runs password hashing off the executor with bounded concurrency and a bounded queue.
pub struct Passwords {
    permits: Semaphore,
    /// Hashes running or waiting.
    pending: AtomicUsize,
    max_pending: usize,
}

/// A place in the hashing queue, given back on drop (also when the waiting login is abandoned).
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Passwords {
    /// At most `concurrency` hashes at once, and at most 64 per permit waiting: beyond that a
    /// login is refused at once rather than queued for longer than a client would wait.
    pub fn new(concurrency: usize) -> Passwords {
        let concurrency = concurrency.max(1);
        Passwords {
            permits: Semaphore::new(concurrency),
            pending: AtomicUsize::new(0),
            max_pending: concurrency * 64,
        }
    }

    fn enqueue(&self) -> Result<QueueSlot<'_>, AuthError> {
        if self.pending.fetch_add(1, Ordering::Relaxed) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(AuthError::Busy);
        }
        Ok(QueueSlot(&self.pending))
    }

    /// Hashes `password`.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        let _slot = self.enqueue()?;
        let _permit = self.permits.acquire().await;
        smol::unblock(move || hash_password(&password)).await
    }

    /// Checks `password` against `phc`, or burns the same time against a dummy when there is no
    /// such user (then it always fails).
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, AuthError> {
        let _slot = self.enqueue()?;
        let _permit = self.permits.acquire().await;
        Ok(smol::unblock(move || match phc {
            Some(phc) => verify_password(&password, &phc),
            None => {
                verify_password(&password, dummy_hash());
                false
            }
        })
        .await)
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

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("wrong horse", &a));
        assert!(!verify_password("x", "not a phc string"));
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_frees_its_slots() {
        let passwords = Passwords::new(1);
        let held: Vec<_> = (0..64).map(|_| passwords.enqueue().unwrap()).collect();
        assert!(matches!(passwords.enqueue(), Err(AuthError::Busy)));
        drop(held);
        assert!(smol::block_on(passwords.verify("password".into(), None)).is_ok());
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
