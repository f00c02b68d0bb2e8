//! The server: listener, executor threads, background chores and graceful shutdown.
//!
//! smol's global executor runs on one thread, so the server runs its own executors (live
//! connections first, new connections until they log in after: see `executors`) on `--threads` threads
//! (the calling thread included). Shutdown: stop accepting, ask every connection to close with
//! 1001, wait for them (bounded), keep who was online for the next start, run the last group
//! commit, flush, and stop the threads. The store is dropped only after every task that could
//! write is gone.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{future, FutureExt};
use smol::{Async, Timer};

use crate::config::{Config, Durability};
use crate::executors::Executors;
use crate::hub::{now_ms, Hub, RoomLimits};
use crate::metrics::Metrics;
use crate::outbox::CloseRequest;
use crate::protocol::close;
use crate::state::State;
use crate::store::commit::Committer;
use crate::store::{Store, StoreError, StoreOptions};

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
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The admin socket cannot be created.
    #[error("cannot create the admin socket {path}: {source}")]
    Admin {
        /// The socket path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A bound, ready server.
pub struct Server {
    listener: Async<TcpListener>,
    admin: crate::admin::socket::Listener,
    state: Arc<State>,
    executors: Arc<Executors>,
}

impl Server {
    /// Opens the database and binds the listener. Fails (never resets anything) if the database
    /// is locked, corrupt or foreign, or the address is taken.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
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
        let metrics = Arc::new(Metrics::new());
        let observed = metrics.clone();
        let healthy = Arc::new(AtomicBool::new(true));
        let health = healthy.clone();
        let committer = Arc::new(Committer::start(
            store.clone(),
            config.durability == Durability::Strict,
            Box::new(move |took, ok| {
                observed.flush_seconds.observe(took.as_secs_f64());
                if !ok {
                    // sled does not recover from a failed flush; operators must look.
                    health.store(false, Ordering::Relaxed);
                }
            }),
        ));
        let executors = Arc::new(Executors::new());
        let executor = executors.live.clone();
        let hub = Arc::new(
            Hub::new(
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
            }),
        );
        // Presence kept by the last graceful shutdown: a reconnect storm then costs no presence
        // events for the users who come back within their grace period. Never worth refusing
        // to start over.
        match store.take_presence() {
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
        let state = Arc::new(State::new(config, store, hub, metrics, healthy));
        Ok(Server {
            listener,
            admin,
            state,
            executors,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.get_ref().local_addr()
    }

    /// Serves until `shutdown` yields (or its sender is dropped), then shuts down gracefully.
    pub fn run(self, shutdown: async_channel::Receiver<()>) -> Result<(), ServerError> {
        let Server {
            listener,
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
        let (live, all_closed) = async_channel::bounded::<()>(1);
        smol::block_on(executors.run(accept(&listener, &state, &executors, &live, shutdown)));
        drop(listener);
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
        if let Err(e) = state.store.save_presence(&state.hub.presence_snapshot()) {
            tracing::warn!(error = %e, "presence not kept for the next start");
        }
        state.hub.committer().shutdown();
        let flushed = state.store.flush();
        drop(stop_threads);
        for worker in workers {
            let _ = worker.join();
        }
        flushed?;
        tracing::info!("shut down cleanly");
        Ok(())
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
    state: &Arc<State>,
    executors: &Executors,
    live: &async_channel::Sender<()>,
    shutdown: async_channel::Receiver<()>,
) {
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            let _ = shutdown.recv().await;
            None
        })
        .await;
        let (stream, peer) = match accepted {
            None => return,
            Some(Ok(accepted)) => accepted,
            Some(Err(e)) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.get_ref().set_nodelay(true);
        let (slot, open) = state.count_socket();
        if open >= state.config.max_connections {
            executors
                .setup
                .spawn(async move {
                    let mut stream = stream;
                    let _ = crate::http::respond(
                        &mut stream,
                        "503 Service Unavailable",
                        "text/plain",
                        &[("Retry-After", "5")],
                        b"too many connections\n",
                        false,
                    )
                    .await;
                    drop(slot);
                })
                .detach();
            continue;
        }
        let state = state.clone();
        let live = live.clone();
        let sessions = executors.live.clone();
        // Until the login, on the setup executor: a connection storm must not delay live users.
        executors
            .setup
            .spawn(async move {
                let served =
                    std::panic::AssertUnwindSafe(crate::http::serve(stream, peer, state.clone()))
                        .catch_unwind()
                        .await;
                match served {
                    Ok(Some((ws, outbox))) => {
                        // The login too runs here, on the setup executor; once logged in, the
                        // connection gets a task of its own on the live executor, sized for the
                        // session alone (this one is sized for the HTTP phase too, and a
                        // connection may live for hours).
                        let login = crate::session::login(ws, outbox, peer, state);
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
                                drop(slot);
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
        let chores = state.clone();
        match smol::unblock(move || crate::admin::retention(&chores)).await {
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
        Timer::after(JANITOR_INTERVAL).await;
    }
}
