//! The server: listener, executor threads, background chores and graceful shutdown.
//!
//! Every accepted socket is admitted against the connection limits (`admission`) before a byte
//! is read; a refused one gets its 503 in the accept loop itself. With `--metrics-listen`, a
//! second listener serves only `/healthz` and `/metrics`, outside those limits.
//!
//! smol's global executor runs on one thread, so the server runs its own executors (live
//! connections first, new connections until they log in after: see `executors`) on `--threads` threads
//! (the calling thread included). Shutdown: stop accepting, ask every connection to close with
//! 1001, wait for them (bounded), keep who was online for the next start, run the last group
//! commit, flush, and stop the threads. The store is dropped only after every task that could
//! write is gone.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{future, FutureExt};
use smol::{Async, Timer};

use crate::admin::PruneReport;
use crate::cluster::{Cluster, Link};
use crate::config::{Config, Durability};
use crate::executors::Executors;
use crate::http::Port;
use crate::hub::{now_ms, Hub, RoomLimits};
use crate::metrics::Metrics;
use crate::outbox::CloseRequest;
use crate::protocol::close;
use crate::state::State;
use crate::store::commit::Committer;
use crate::store::gate::{statvfs_probe, Condition, Headroom, WriteGate};
use crate::store::permissions::{prepare_data_dir, DataDirError};
use crate::store::{Store, StoreError, StoreOptions};
use crate::tls::Tls;
use crate::transport::Socket;

/// How long shutdown waits for connections to close before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often sessions and cids that can no longer matter are removed.
const JANITOR_INTERVAL: Duration = Duration::from_secs(3600);

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The data directory cannot be created, or is not private.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The database cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The admin socket cannot be created.
    #[error("cannot create the admin socket {path}: {source}")]
    Admin {
        /// The socket path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The last database write did not return in time at shutdown.
    #[error("the database's last write did not return within {waited:?} (--flush-timeout): exiting without it; {messages} messages sent before the shutdown may not be on disk (none was acknowledged, so their senders resend them with the same cid)")]
    Unfinished {
        /// Messages queued or being written.
        messages: usize,
        /// How long shutdown waited.
        waited: Duration,
    },
    /// Cluster mode cannot start: Redis is unreachable or not durable.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// How [`Server::run`] ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The shutdown channel asked (a signal).
    Requested,
    /// A database write failed, the disk has room again, and the embedded database (sled 0.34)
    /// refuses writes until it is reopened: the caller starts the server again in place.
    ToReopen,
}

/// How long writes must have stayed failed, with space back on the disk, before the server
/// reopens its database: long enough for a probe write to have had its chance.
const REOPEN_AFTER: Duration = Duration::from_secs(3);

/// A bound, ready server.
pub struct Server {
    listener: Async<TcpListener>,
    tls: Option<Arc<Tls>>,
    operations: Option<Async<TcpListener>>,
    admin: crate::admin::socket::Listener,
    state: Arc<State>,
    executors: Arc<Executors>,
}

impl Server {
    /// Opens the database and binds the listener. Fails (never resets anything) if the database
    /// is locked, corrupt or foreign, or the address is taken.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(Tls::load(cert, key)?)),
            _ => None,
        };
        prepare_data_dir(&config.data_dir, &config.db_path())?;
        let store = Arc::new(Store::open(
            &config.db_path(),
            &StoreOptions {
                cache_bytes: config.cache_bytes,
                background_flush: config.durability == Durability::Relaxed,
            },
        )?);
        // Only now, holding the database lock, may a stale admin socket be replaced.
        let admin = crate::admin::socket::Listener::bind(&config.data_dir).map_err(|source| {
            ServerError::Admin {
                path: crate::admin::socket::socket_path(&config.data_dir),
                source,
            }
        })?;
        let listener = listen(config.listen)
            .and_then(Async::new)
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let operations = config
            .metrics_listen
            .map(|addr| {
                listen(addr)
                    .and_then(Async::new)
                    .map_err(|source| ServerError::Bind { addr, source })
            })
            .transpose()?;
        let metrics = Arc::new(Metrics::new());
        let observed = metrics.clone();
        let headroom = (config.min_free_space > 0).then(|| Headroom {
            min_free: config.min_free_space,
            probe: statvfs_probe(config.data_dir.clone()),
        });
        let gate = WriteGate::new(metrics.clone(), config.flush_timeout, headroom);
        let committer = Arc::new(Committer::start(
            store.clone(),
            config.durability == Durability::Strict,
            Box::new(move |took, _| observed.flush_seconds.observe(took.as_secs_f64())),
            gate,
        ));
        let cluster = match &config.cluster {
            Some(url) => {
                let link = smol::block_on(Link::connect(url, config.durability))?;
                let cluster = Arc::new(Cluster::new(link, config.cid_ttl, config.presence_grace)?);
                tracing::info!(node = %format!("{:016x}", cluster.node), "cluster mode: rooms and accounts are shared through Redis");
                Some(cluster)
            }
            None => None,
        };
        let executors = Arc::new(Executors::new());
        let executor = executors.live.clone();
        let mut hub = Hub::new(
            store.clone(),
            committer,
            metrics.clone(),
            executor.clone(),
            config.presence_grace,
            config.replay_limit,
        )
        .with_room_limits(RoomLimits {
            creations_per_hour: config.rooms_per_hour,
            unload_after: config.room_unload_after,
        });
        if let Some(cluster) = &cluster {
            hub = hub.with_cluster(cluster.clone());
        }
        let hub = Arc::new(hub);
        if let Some(cluster) = &cluster {
            cluster.start(hub.clone(), &executor);
        }
        // Presence kept by the last graceful shutdown: a reconnect storm then costs no presence
        // events for the users who come back within their grace period. Never worth refusing
        // to start over.
        // In cluster mode presence lives in Redis and outlasts a node by its grace period.
        let snapshot = match cluster {
            None => store.take_presence(),
            Some(_) => Ok(None),
        };
        match snapshot {
            Ok(Some(snapshot)) => {
                let restored = hub.restore_presence(snapshot);
                tracing::info!(
                    users = restored,
                    "presence grace continued from the last shutdown"
                );
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "presence from the last shutdown not restored"),
        }
        let state = Arc::new(State::new(config, store, hub, metrics));
        Ok(Server {
            listener,
            tls,
            operations,
            admin,
            state,
            executors,
        })
    }

    /// The certificate in use, for reloading it (SIGHUP); `None` without TLS.
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.get_ref().local_addr()
    }

    /// The address `/healthz` and `/metrics` are served on, if `--metrics-listen` was given.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.operations
            .as_ref()
            .and_then(|listener| listener.get_ref().local_addr().ok())
    }

    /// Serves until `shutdown` yields (or its sender is dropped), then shuts down gracefully.
    pub fn run(self, shutdown: async_channel::Receiver<()>) -> Result<Stopped, ServerError> {
        let Server {
            listener,
            tls,
            operations,
            admin,
            state,
            executors,
        } = self;
        let executor = executors.live.clone();
        let (stop_threads, threads_stopped) = async_channel::bounded::<()>(1);
        let workers: Vec<_> = (1..state.config.threads)
            .map(|i| {
                let executors = executors.clone();
                let stopped = threads_stopped.clone();
                std::thread::Builder::new()
                    .name(format!("chatd-worker-{i}"))
                    .spawn(move || smol::block_on(executors.run(stopped.recv())))
            })
            .collect::<Result<_, _>>()
            .map_err(|source| ServerError::Bind {
                addr: state.config.listen,
                source,
            })?;
        executor.spawn(janitor(state.clone())).detach();
        executor.spawn(unload_idle_rooms(state.clone())).detach();
        executor
            .spawn(crate::heartbeat::run(state.clone()))
            .detach();
        let admin_task = executor.spawn(crate::admin::socket::serve(
            admin,
            state.clone(),
            executor.clone(),
        ));
        let operations_task = operations.map(|listener| {
            executor.spawn(serve_operations(listener, state.clone(), executors.clone()))
        });
        let (live, all_closed) = async_channel::bounded::<()>(1);
        let (stop, stopping) = async_channel::bounded::<Stopped>(2);
        let requested = stop.clone();
        executor
            .spawn(async move {
                let _ = shutdown.recv().await;
                let _ = requested.try_send(Stopped::Requested);
            })
            .detach();
        executor
            .spawn(reopen_when_space_returns(state.clone(), stop))
            .detach();
        let stopped = smol::block_on(executors.run(accept(
            &listener,
            tls.as_deref(),
            &state,
            &executors,
            &live,
            stopping,
        )));
        drop(listener);
        if let Some(task) = operations_task {
            smol::block_on(executors.run(task.cancel()));
        }
        // Stops admin connections and removes the admin socket file.
        smol::block_on(executors.run(admin_task.cancel()));
        tracing::info!("shutting down: closing connections");
        state.close_all(CloseRequest {
            code: close::GOING_AWAY,
            reason: "server shutting down",
        });
        drop(live);
        smol::block_on(executors.run(future::or(
            async {
                let _ = all_closed.recv().await;
            },
            async {
                Timer::after(SHUTDOWN_GRACE).await;
                tracing::warn!(
                    "connections still open after the shutdown grace period; dropping them"
                );
            },
        )));
        let committer = state.hub.committer();
        // A write to a disk that does not answer could block this thread for good.
        match committer.gate().admit_flush_waiter() {
            // A cluster's presence is in Redis, where the other nodes see it expire.
            Ok(()) if state.hub.cluster().is_some() => {}
            Ok(()) => {
                if let Err(e) = state.store.save_presence(&state.hub.presence_snapshot()) {
                    tracing::warn!(error = %e, "presence not kept for the next start");
                }
            }
            Err(e) => tracing::warn!(reason = %e, "presence not kept for the next start"),
        }
        if let Err(unfinished) = committer.shutdown(state.config.flush_timeout) {
            // Exiting leaves the stuck thread behind; waiting longer would only keep the
            // process (and the database lock) from a restart that can recover.
            return Err(ServerError::Unfinished {
                messages: unfinished.messages,
                waited: state.config.flush_timeout,
            });
        }
        let flushed = state.store.flush();
        drop(stop_threads);
        for worker in workers {
            let _ = worker.join();
        }
        if stopped == Stopped::ToReopen {
            // The database failed before; its last flush may fail too, and nothing acknowledged
            // depends on it (every ack waited for its own flush).
            if let Err(e) = flushed {
                tracing::warn!(error = %e, "the failed database's last flush failed too");
            }
            tracing::info!("shut down to reopen the database");
            return Ok(Stopped::ToReopen);
        }
        flushed?;
        tracing::info!("shut down cleanly");
        Ok(Stopped::Requested)
    }
}

/// Connections the kernel may hold completed but not yet accepted. std's 128 turns a
/// reconnect storm (every client of a restarted server at once) into dropped SYNs and
/// one-second retransmits; the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 8192;

/// A listening socket with a backlog sized for reconnect storms.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Lets a restarted server bind while the old one's connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

async fn accept(
    listener: &Async<TcpListener>,
    tls: Option<&Tls>,
    state: &Arc<State>,
    executors: &Executors,
    live: &async_channel::Sender<()>,
    stopping: async_channel::Receiver<Stopped>,
) -> Stopped {
    loop {
        let accepted = future::or(async { Ok(listener.accept().await) }, async {
            Err(stopping.recv().await.unwrap_or(Stopped::Requested))
        })
        .await;
        let (stream, peer) = match accepted {
            Err(stopped) => return stopped,
            Ok(Ok(accepted)) => accepted,
            Ok(Err(e)) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.get_ref().set_nodelay(true);
        let slot = match state.admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                state.refused(refusal, peer);
                refuse_busy(stream.get_ref());
                continue;
            }
        };
        let stream = match tls.map(Tls::accept) {
            None => Socket::Plain(stream),
            Some(Ok(session)) => Socket::tls(stream, session),
            Some(Err(e)) => {
                tracing::warn!(%peer, error = %e, "TLS session could not be created");
                continue;
            }
        };
        let state = state.clone();
        let live = live.clone();
        let sessions = executors.live.clone();
        // Until the login, on the setup executor: a connection storm must not delay live users.
        executors
            .setup
            .spawn(async move {
                let served = std::panic::AssertUnwindSafe(crate::http::serve(
                    stream,
                    peer,
                    state.clone(),
                    Port::Main,
                ))
                .catch_unwind()
                .await;
                match served {
                    Ok(Some((ws, outbox))) => {
                        // The login too runs here, on the setup executor; once logged in, the
                        // connection gets a task of its own on the live executor, sized for the
                        // session alone (this one is sized for the HTTP phase too, and a
                        // connection may live for hours).
                        let login = crate::session::login(ws, outbox, peer, state, slot);
                        let established = match std::panic::AssertUnwindSafe(login)
                            .catch_unwind()
                            .await
                        {
                            Ok(Some(established)) => established,
                            Ok(None) => return,
                            Err(_) => {
                                tracing::error!(%peer, "connection task panicked; the connection was dropped");
                                return;
                            }
                        };
                        sessions
                            .spawn(async move {
                                let run = crate::session::run(established);
                                if std::panic::AssertUnwindSafe(run)
                                    .catch_unwind()
                                    .await
                                    .is_err()
                                {
                                    tracing::error!(%peer, "connection task panicked; the connection was dropped");
                                }
                                drop(live);
                            })
                            .detach();
                    }
                    Ok(None) => {}
                    Err(_) => {
                        tracing::error!(%peer, "connection task panicked; the connection was dropped")
                    }
                }
            })
            .detach();
    }
}

/// The answer to a socket refused at accept.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\nConnection: close\r\nRetry-After: 5\r\nX-Content-Type-Options: nosniff\r\n\r\ntoo many connections\n";

/// Answers a refused socket with one non-blocking write, right in the accept loop: a refusal
/// must cost no task and no slot, or a flood of refused sockets would exhaust what the limits
/// protect. A fresh socket's send buffer always takes these few bytes.
fn refuse_busy(stream: &std::net::TcpStream) {
    use std::io::Write;
    let mut stream = stream;
    let _ = stream.write(BUSY_RESPONSE);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Connections the `--metrics-listen` port serves at once; more are dropped. Scrapers and health
/// checks need a handful.
const OPERATIONS_CONNECTIONS: usize = 64;

/// Serves `/healthz` and `/metrics` on the `--metrics-listen` port until cancelled. Its
/// connections are outside the connection limits, so monitoring works while the main port is
/// full, and bounded on their own.
async fn serve_operations(
    listener: Async<TcpListener>,
    state: Arc<State>,
    executors: Arc<Executors>,
) {
    let permits = Arc::new(async_lock::Semaphore::new(OPERATIONS_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on the metrics port");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = permits.try_acquire_arc() else {
            continue;
        };
        let state = state.clone();
        executors
            .setup
            .spawn(async move {
                // Plain HTTP: the operations port is a private address for scrapers.
                let _ = std::panic::AssertUnwindSafe(crate::http::serve(
                    Socket::Plain(stream),
                    peer,
                    state,
                    Port::Operations,
                ))
                .catch_unwind()
                .await;
                drop(permit);
            })
            .detach();
    }
}

/// Asks for a restart in place once writes have failed for [`REOPEN_AFTER`] and the data
/// directory's file system has room again (`--min-free-space`, at least 1 MiB): sled keeps
/// refusing writes after its first failed one, so only reopening the database recovers.
async fn reopen_when_space_returns(state: Arc<State>, stop: async_channel::Sender<Stopped>) {
    let free_space = statvfs_probe(state.config.data_dir.clone());
    let wanted = state.config.min_free_space.max(1 << 20);
    let mut failed_since = None;
    loop {
        Timer::after(Duration::from_secs(1)).await;
        if state.hub.committer().gate().condition() != Condition::Failed {
            failed_since = None;
            continue;
        }
        let since = *failed_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < REOPEN_AFTER || free_space().map_or(true, |free| free < wanted) {
            continue;
        }
        tracing::warn!(
            "writes failed and the disk has room again: restarting in place to reopen the database (clients reconnect and resume)"
        );
        let _ = stop.try_send(Stopped::ToReopen);
        return;
    }
}

/// Unloads idle rooms, checking a few times per `--room-unload-after` (at most every minute).
async fn unload_idle_rooms(state: Arc<State>) {
    let every = (state.config.room_unload_after / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        Timer::after(every).await;
        let unloaded = state.hub.unload_idle_rooms();
        if unloaded > 0 {
            tracing::debug!(unloaded, "unloaded idle rooms");
        }
    }
}

/// Prunes by `--retention` / `--retention-per-room`, if set: the database, or in cluster mode
/// the room logs in Redis (every node does; `cluster::prune` keeps that from removing more
/// than the rule says).
async fn apply_retention(state: &Arc<State>) -> Result<Option<PruneReport>, String> {
    let Some(rule) = crate::admin::retention_rule(&state.config) else {
        return Ok(None);
    };
    if let Some(cluster) = state.hub.cluster() {
        let rooms = cluster.logs.room_names().await.map_err(|e| e.to_string())?;
        return cluster
            .logs
            .prune(&rooms, rule, false)
            .await
            .map(Some)
            .map_err(|e| e.to_string());
    }
    let state = state.clone();
    smol::unblock(move || crate::admin::retention(&state, rule))
        .await
        .map(Some)
        .map_err(|e| e.message)
}

/// Periodically removes sessions and cids that can no longer be used.
async fn janitor(state: Arc<State>) {
    loop {
        let chores = state.clone();
        let result = smol::unblock(move || -> Result<(usize, usize), StoreError> {
            let sessions = chores.store.remove_dead_sessions(now_ms())?;
            let cid_ttl = chores.config.cid_ttl.as_millis() as u64;
            let cids = chores
                .store
                .remove_cids_before(now_ms().saturating_sub(cid_ttl))?;
            Ok((sessions, cids))
        })
        .await;
        match result {
            Ok((sessions, cids)) if sessions + cids > 0 => {
                tracing::info!(sessions, cids, "removed expired sessions and cids")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cleaning up sessions and cids failed"),
        }
        match apply_retention(&state).await {
            Ok(Some(report)) if report.removed > 0 => {
                for room in &report.rooms {
                    tracing::info!(
                        room = %room.room,
                        removed = room.removed,
                        first_id = room.first_id,
                        last_id = room.last_id,
                        remaining = room.remaining,
                        "retention pruned messages"
                    );
                }
                tracing::info!(
                    removed = report.removed,
                    rooms = report.rooms.len(),
                    "retention prune done"
                );
            }
            Ok(Some(_)) => tracing::debug!("retention prune: nothing to remove"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "retention prune failed"),
        }
        // The throttle maps are bounded anyway; sweeping returns the memory of expired entries.
        state.throttle.expire();
        state.account_limits.expire(now_ms());
        Timer::after(JANITOR_INTERVAL).await;
    }
}
