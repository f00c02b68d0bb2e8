//! Users and sessions, wherever the server keeps them: the embedded store, or (cluster mode)
//! the Redis every node shares, so an account registered on one node logs in on any.
//!
//! A write is durable when the call returns in cluster mode (Redis answers after its fsync);
//! with the embedded store the caller waits for the committer's next flush, as it always did.

use std::sync::Arc;

use crate::cluster::accounts::ClusterAccounts;
use crate::cluster::ClusterError;
use crate::store::{NewUser, Session, Store, StoreError, User};

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccountsError {
    /// The embedded store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis failed or is unreachable.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Where accounts live.
pub(crate) enum Accounts {
    /// The embedded store.
    Local(Arc<Store>),
    /// The cluster's Redis.
    Cluster(ClusterAccounts),
}

impl Accounts {
    /// The user named `name` (any case).
    pub(crate) async fn user(&self, name: &str) -> Result<Option<User>, AccountsError> {
        Ok(match self {
            Accounts::Local(store) => store.user(name)?,
            Accounts::Cluster(accounts) => accounts.user(name).await?,
        })
    }

    /// Creates `user` unless the name is taken or looks like a taken one.
    pub(crate) async fn register(&self, user: &User) -> Result<NewUser, AccountsError> {
        Ok(match self {
            Accounts::Local(store) => store.register_user(user)?,
            Accounts::Cluster(accounts) => accounts.add_user(user, true).await?,
        })
    }

    /// Stores a session under its token's hash.
    pub(crate) async fn insert_session(
        &self,
        token_hash: &[u8],
        session: &Session,
    ) -> Result<(), AccountsError> {
        match self {
            Accounts::Local(store) => store.insert_session(token_hash, session)?,
            Accounts::Cluster(accounts) => accounts.insert_session(token_hash, session).await?,
        }
        Ok(())
    }

    /// The session stored under `token_hash`.
    pub(crate) async fn session(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<Session>, AccountsError> {
        Ok(match self {
            Accounts::Local(store) => store.session(token_hash)?,
            Accounts::Cluster(accounts) => accounts.session(token_hash).await?,
        })
    }

    /// Whether a write is durable once the call returns (no flush to wait for).
    pub(crate) fn durable_on_return(&self) -> bool {
        matches!(self, Accounts::Cluster(_))
    }
}
