//! Accounts in Redis: users and their sessions, so that a user registered through one node logs
//! in through any, and a token issued by one resumes on another.
//!
//! Values are the same versioned records the sled store keeps (a version byte, then bincode),
//! so a record read from either backend decodes the same way. Registration is one Lua script:
//! the name check, the look-alike check and the writes happen together, so two nodes cannot
//! both create `alice` or `aIice`. Sessions expire in Redis at their `expires_ms`.

use std::sync::OnceLock;

use redis::Script;

use super::{keys, ClusterError, Link};
use crate::rules;
use crate::store::codec;
use crate::store::{user_key, NewUser, Session, User};

/// Creates a user unless the name is taken or (with ARGV[2] = '1') looks like a taken one.
/// KEYS: user record, skeleton set, user count. ARGV: record, refuse look-alikes, user key.
const REGISTER: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'taken' end
if ARGV[2] == '1' and redis.call('SCARD', KEYS[2]) > 0 then return 'look-alike' end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('INCR', KEYS[3])
return 'created'
";

/// Deletes a user. KEYS: user record, skeleton set, user count. ARGV: user key. Replies 1 if
/// the user existed.
const UNREGISTER: &str = r"
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DECR', KEYS[3])
return 1
";

fn unregister_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(UNREGISTER))
}

fn register_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(REGISTER))
}

/// Users and sessions, through a node's [`Link`].
#[derive(Clone)]
pub(crate) struct ClusterAccounts {
    link: Link,
}

impl ClusterAccounts {
    /// Accounts over `link`.
    pub(crate) fn new(link: Link) -> ClusterAccounts {
        ClusterAccounts { link }
    }

    /// The user named `name` (any case).
    pub(crate) async fn user(&self, name: &str) -> Result<Option<User>, ClusterError> {
        self.record(&keys::user(&user_key(name))).await
    }

    /// The versioned record stored under `key`, if any.
    async fn record<R: crate::store::Record>(&self, key: &str) -> Result<Option<R>, ClusterError> {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.link.commands())
            .await?;
        value
            .map(|v| {
                codec::decode(&v, key.as_bytes()).map_err(|e| ClusterError::Corrupt(e.to_string()))
            })
            .transpose()
    }

    /// Creates `user` unless the name (any case) is taken or, with `refuse_look_alikes`,
    /// looks like an existing one.
    pub(crate) async fn add_user(
        &self,
        user: &User,
        refuse_look_alikes: bool,
    ) -> Result<NewUser, ClusterError> {
        let key = user_key(&user.name);
        let outcome: String = register_script()
            .key(keys::user(&key))
            .key(keys::skeleton(&rules::name_skeleton(&user.name)))
            .key(keys::USER_COUNT)
            .arg(codec::encode(user))
            .arg(if refuse_look_alikes { "1" } else { "0" })
            .arg(&key)
            .invoke_async(&mut self.link.commands())
            .await?;
        match outcome.as_str() {
            "created" => Ok(NewUser::Created),
            "taken" => Ok(NewUser::Taken),
            "look-alike" => Ok(NewUser::LookAlike),
            other => Err(ClusterError::Corrupt(format!(
                "unexpected registration reply {other:?}"
            ))),
        }
    }

    /// Replaces the record of an existing user (an admin's ban or unban).
    pub(crate) async fn put_user(&self, user: &User) -> Result<(), ClusterError> {
        let () = redis::cmd("SET")
            .arg(keys::user(&user_key(&user.name)))
            .arg(codec::encode(user))
            .arg("XX")
            .query_async(&mut self.link.commands())
            .await?;
        Ok(())
    }

    /// Deletes `user`'s record (its name free again); returns whether it existed.
    pub(crate) async fn delete_user(&self, user: &User) -> Result<bool, ClusterError> {
        let key = user_key(&user.name);
        let deleted: i64 = unregister_script()
            .key(keys::user(&key))
            .key(keys::skeleton(&rules::name_skeleton(&user.name)))
            .key(keys::USER_COUNT)
            .arg(&key)
            .invoke_async(&mut self.link.commands())
            .await?;
        Ok(deleted == 1)
    }

    /// Removes every session of `user_key` and the cids it used; returns the sessions removed.
    /// Sessions are keyed by token, so this reads them all.
    pub(crate) async fn remove_user_sessions(&self, user_key: &str) -> Result<u64, ClusterError> {
        let hashes = self.link.keys_with_prefix(&keys::session(&[])).await?;
        let mut removed = 0;
        for batch in hashes.chunks(500) {
            let names: Vec<String> = batch
                .iter()
                .map(|h| format!("{}{h}", keys::session(&[])))
                .collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&names)
                .query_async(&mut self.link.commands())
                .await?;
            let theirs: Vec<&String> = names
                .iter()
                .zip(values)
                .filter_map(|(name, value)| {
                    let session: Session = codec::decode(&value?, name.as_bytes()).ok()?;
                    (session.user_key == user_key).then_some(name)
                })
                .collect();
            if !theirs.is_empty() {
                let deleted: u64 = redis::cmd("DEL")
                    .arg(&theirs)
                    .query_async(&mut self.link.commands())
                    .await?;
                removed += deleted;
            }
        }
        let cid_prefix = keys::cid(user_key, "");
        let cids = self.link.keys_with_prefix(&cid_prefix).await?;
        for batch in cids.chunks(500) {
            let names: Vec<String> = batch.iter().map(|c| format!("{cid_prefix}{c}")).collect();
            let _: u64 = redis::cmd("DEL")
                .arg(&names)
                .query_async(&mut self.link.commands())
                .await?;
        }
        Ok(removed)
    }

    /// Stores a session under its token's hash until it expires.
    pub(crate) async fn insert_session(
        &self,
        token_hash: &[u8],
        session: &Session,
    ) -> Result<(), ClusterError> {
        let () = redis::cmd("SET")
            .arg(keys::session(token_hash))
            .arg(codec::encode(session))
            .arg("PXAT")
            .arg(session.expires_ms.max(1))
            .query_async(&mut self.link.commands())
            .await?;
        Ok(())
    }

    /// Stores a session unless one is stored under `token_hash` already; returns whether it was
    /// stored (an import keeps the sessions it finds).
    pub(crate) async fn insert_new_session(
        &self,
        token_hash: &[u8],
        session: &Session,
    ) -> Result<bool, ClusterError> {
        let stored: Option<String> = redis::cmd("SET")
            .arg(keys::session(token_hash))
            .arg(codec::encode(session))
            .arg("NX")
            .arg("PXAT")
            .arg(session.expires_ms.max(1))
            .query_async(&mut self.link.commands())
            .await?;
        Ok(stored.is_some())
    }

    /// The session stored under `token_hash`, unless it expired.
    pub(crate) async fn session(&self, token_hash: &[u8]) -> Result<Option<Session>, ClusterError> {
        self.record(&keys::session(token_hash)).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Redis as TestRedis;
    use super::*;
    use crate::config::Durability;

    fn accounts(redis: &TestRedis) -> ClusterAccounts {
        let link = smol::block_on(Link::connect(&redis.url(), Durability::Strict)).expect("link");
        ClusterAccounts::new(link)
    }

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            password_hash: "$argon2id$test".into(),
            created_ms: 5,
            banned: false,
            token_epoch: 0,
        }
    }

    #[test]
    fn a_name_is_taken_in_any_case_and_look_alikes_are_refused_on_every_node() {
        let redis = TestRedis::start();
        let (a, b) = (accounts(&redis), accounts(&redis));
        smol::block_on(async {
            assert_eq!(
                a.add_user(&user("Alice"), true).await.unwrap(),
                NewUser::Created
            );
            assert_eq!(
                b.add_user(&user("aLICE"), true).await.unwrap(),
                NewUser::Taken
            );
            assert_eq!(
                b.add_user(&user("AIice"), true).await.unwrap(),
                NewUser::LookAlike
            );
            // An admin import may keep look-alikes that exist elsewhere.
            assert_eq!(
                b.add_user(&user("AIice"), false).await.unwrap(),
                NewUser::Created
            );
            let found = b
                .user("ALICE")
                .await
                .unwrap()
                .expect("found from the other node");
            assert_eq!(found, user("Alice"));
            assert_eq!(a.user("nobody").await.unwrap(), None);
        });
    }

    #[test]
    fn a_session_resumes_anywhere_until_it_expires() {
        let redis = TestRedis::start();
        let (a, b) = (accounts(&redis), accounts(&redis));
        let now = crate::hub::now_ms();
        let session = Session {
            user_key: "alice".into(),
            created_ms: now,
            expires_ms: now + 60_000,
            epoch: 0,
        };
        smol::block_on(async {
            a.insert_session(&[7; 32], &session).await.unwrap();
            assert_eq!(b.session(&[7; 32]).await.unwrap(), Some(session.clone()));
            assert_eq!(b.session(&[8; 32]).await.unwrap(), None);
            let expired = Session {
                expires_ms: now.saturating_sub(1),
                ..session
            };
            a.insert_session(&[9; 32], &expired).await.unwrap();
            assert_eq!(b.session(&[9; 32]).await.unwrap(), None);
        });
    }
}
