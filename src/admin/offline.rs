//! Choosing where a command runs (the server's admin socket, or the database directly), and
//! the commands that only make sense with the server stopped: `generate` and `compact`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::progress::{Report, Tick};
use super::socket::{socket_path, Client};
use super::{execute, AdminError, Context, ErrorKind, Reply, Request};
use crate::hub::now_ms;
use crate::store::maintenance::{Line, CHUNK};
use crate::store::permissions::prepare_data_dir;
use crate::store::{Message, Store, StoreError, StoreOptions, User};

/// What a command needs from the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Works through a server or directly.
    Any,
    /// Needs a running server (named command).
    Server(&'static str),
    /// Needs the server stopped (named command).
    Offline(&'static str),
}

/// Where commands run.
pub enum Target {
    /// Through a running server's admin socket.
    Server(Client),
    /// Directly on the database (no server holds it).
    Local(Store),
}

/// The database directory inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

fn open_store(data_dir: &Path) -> Result<Store, AdminError> {
    prepare_data_dir(data_dir, &db_path(data_dir))
        .map_err(|e| AdminError::failed(e.to_string()))?;
    Store::open(&db_path(data_dir), &StoreOptions::default()).map_err(|e| match e {
        StoreError::Locked { .. } => AdminError::failed(format!(
            "a server holds the database in {} but its admin socket {} is not answering; check that server (or wait for it to finish starting) and try again",
            data_dir.display(),
            socket_path(data_dir).display()
        )),
        other => AdminError::failed(other.to_string()),
    })
}

/// Finds the instance in `data_dir`: its running server if one answers on the admin socket,
/// else the database itself. With `create`, a missing database is created (for commands
/// that add data); otherwise a missing one is an error naming the directory.
pub fn open(data_dir: &Path, need: Need, create: bool) -> Result<Target, AdminError> {
    if let Some(client) = Client::connect(data_dir)? {
        if let Need::Offline(what) = need {
            return Err(AdminError::new(
                ErrorKind::NeedsOffline,
                format!(
                    "a chatd server is running on {}; stop it before `chatd admin {what}`",
                    data_dir.display()
                ),
            ));
        }
        return Ok(Target::Server(client));
    }
    let exists = db_path(data_dir).exists();
    if let Need::Server(what) = need {
        if exists {
            // Distinguish "stopped" from "running but not answering".
            drop(open_store(data_dir)?);
        }
        return Err(AdminError::new(
            ErrorKind::NeedsServer,
            format!(
                "no chatd server is running on {}; `chatd admin {what}` needs one (start it with `chatd serve --data-dir {}`)",
                data_dir.display(),
                data_dir.display()
            ),
        ));
    }
    if !exists && !create {
        return Err(AdminError::new(
            ErrorKind::NotFound,
            format!(
                "there is no chatd database in {}; pass the data directory of your server with --data-dir (or CHATD_DATA_DIR)",
                data_dir.display()
            ),
        ));
    }
    open_store(data_dir).map(Target::Local)
}

impl Target {
    /// Runs a command here.
    pub fn run(
        &mut self,
        request: Request,
        sink: &mut dyn FnMut(Line) -> Result<(), AdminError>,
    ) -> Result<Reply, AdminError> {
        self.run_reporting(request, sink, None)
    }

    /// Runs a command here, passing its progress to `progress` (through the server's admin
    /// socket when one runs).
    pub fn run_reporting(
        &mut self,
        request: Request,
        sink: &mut dyn FnMut(Line) -> Result<(), AdminError>,
        progress: Option<Report<'_>>,
    ) -> Result<Reply, AdminError> {
        match self {
            Target::Server(client) => client.call(&request, sink, progress),
            Target::Local(store) => execute(
                &Context {
                    store,
                    live: None,
                    progress,
                },
                request,
                sink,
            ),
        }
    }

    /// Whether commands go through a running server.
    pub fn is_server(&self) -> bool {
        matches!(self, Target::Server(_))
    }
}

/// Bytes used by the files under `path`.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// What `generate` makes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateSpec {
    /// Rooms `room-001` … (existing ones are reused).
    pub rooms: u32,
    /// Messages, spread round-robin over the rooms.
    pub messages: u64,
    /// Users `user-0001` … (password `password123`); authors of the messages.
    pub users: u32,
    /// Timestamps spread evenly over this span, ending now.
    pub span: Duration,
    /// Approximate text length in bytes.
    pub text_bytes: usize,
}

const WORDS: &[&str] = &[
    "hello", "world", "chat", "server", "message", "room", "deploy", "today", "lunch", "coffee",
    "review", "merge", "ticket", "build", "green", "red", "ship", "it", "works", "on", "my",
    "machine", "please", "thanks", "later", "meeting", "now", "sled", "rust", "async",
];

/// Fills `store` with synthetic data as fast as the store allows (bulk transactions, no
/// per-message flush; one flush at the end). `progress` is called with messages written.
pub fn generate(
    store: &Store,
    spec: &GenerateSpec,
    progress: &mut dyn FnMut(u64),
) -> Result<(), AdminError> {
    if spec.rooms == 0 || spec.users == 0 {
        return Err(AdminError::usage("--rooms and --users must be at least 1"));
    }
    let now = now_ms();
    let hash =
        crate::auth::hash_password("password123").map_err(|e| AdminError::failed(e.to_string()))?;
    let users: Vec<String> = (1..=spec.users).map(|i| format!("user-{i:04}")).collect();
    for name in &users {
        store.insert_user(&User {
            name: name.clone(),
            password_hash: hash.clone(),
            created_ms: now.saturating_sub(spec.span.as_millis() as u64),
            banned: false,
            token_epoch: 0,
        })?;
    }
    let rooms: Vec<String> = (1..=spec.rooms).map(|i| format!("room-{i:03}")).collect();
    let start = now.saturating_sub(spec.span.as_millis() as u64);
    for name in &rooms {
        store.ensure_room(name, start)?;
    }
    let first_id = store.reserve_ids(spec.messages);
    let mut pending: Vec<Vec<(u64, Message)>> = vec![Vec::new(); rooms.len()];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let step = spec.span.as_millis() as f64 / spec.messages.max(1) as f64;
    let mut written = 0;
    for i in 0..spec.messages {
        let r = (i % u64::from(spec.rooms)) as usize;
        let mut text = String::with_capacity(spec.text_bytes + 8);
        while text.len() < spec.text_bytes.max(1) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(WORDS[(seed % WORDS.len() as u64) as usize]);
        }
        let message = Message::new(
            users[(seed >> 32) as usize % users.len()].clone(),
            text,
            start + (i as f64 * step) as u64,
            None,
        );
        pending[r].push((first_id + i, message));
        if pending[r].len() == CHUNK {
            written += store.insert_messages(&rooms[r], &std::mem::take(&mut pending[r]))?;
            progress(written);
        }
    }
    for (r, batch) in pending.into_iter().enumerate() {
        if !batch.is_empty() {
            written += store.insert_messages(&rooms[r], &batch)?;
        }
    }
    progress(written);
    store.flush()?;
    Ok(())
}

/// What `compact` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compacted {
    /// Bytes on disk before.
    pub bytes_before: u64,
    /// Bytes on disk after.
    pub bytes_after: u64,
    /// Entries copied.
    pub entries: u64,
}

/// Exchanges two directories atomically (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no atomic exchange",
    ))
}

/// Rewrites the database into a fresh directory and swaps it in: reclaims the space sled keeps
/// after many deletions. Offline only. The old database stays in place until the new one is
/// complete, flushed and verified; the swap is one atomic `renameat2(RENAME_EXCHANGE)` on
/// Linux (elsewhere two renames, the old one kept as `db.compact-old` until the second
/// succeeded). A crash at any point leaves `db` a complete database.
///
/// `progress` gets entries copied, out of an estimate from the counters (users, rooms,
/// messages; sessions and cids are not counted in advance), then notes for the phases after
/// the copy.
pub fn compact(data_dir: &Path, progress: Report<'_>) -> Result<Compacted, AdminError> {
    let db = db_path(data_dir);
    if !db.exists() {
        return Err(AdminError::new(
            ErrorKind::NotFound,
            format!("there is no chatd database in {}", data_dir.display()),
        ));
    }
    let fresh_path = data_dir.join("db.compact-new");
    let old_path = data_dir.join("db.compact-old");
    let io_err = |what: &str, p: &Path, e: io::Error| {
        AdminError::failed(format!("{what} {}: {e}", p.display()))
    };
    let store = open_store(data_dir)?;
    // Leftovers of an interrupted compact are never the live database: `db` always is.
    for leftover in [&fresh_path, &old_path] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover)
                .map_err(|e| io_err("cannot remove the leftover", leftover, e))?;
        }
    }
    let bytes_before = dir_size(&db);
    let estimate = store.user_count()? + store.rooms().count() as u64 + store.message_count()?;
    let tick = |done: u64, note: Option<&str>| {
        progress(&Tick {
            done,
            total: Some(estimate),
            note: note.map(str::to_owned),
        })
    };
    tick(0, None);
    let fresh = Store::open(&fresh_path, &StoreOptions::default())?;
    let entries = store.copy_into(&fresh, &mut |copied| tick(copied, None))?;
    drop(fresh);
    // Verify before swapping, reading the copy back from disk.
    tick(entries, Some("verifying the copy"));
    let fresh = Store::reopen(&fresh_path, &StoreOptions::default())?;
    let same = fresh.user_count()? == store.user_count()?
        && fresh.message_count()? == store.message_count()?
        && fresh.rooms().count() == store.rooms().count()
        && fresh.id_floor() >= store.id_floor();
    drop(fresh);
    if !same {
        let _ = std::fs::remove_dir_all(&fresh_path);
        return Err(AdminError::failed(
            "the compacted copy does not match the original; nothing was changed (please report this)",
        ));
    }
    tick(entries, Some("swapping it in"));
    match exchange(&db, &fresh_path) {
        Ok(()) => {
            // `db` is the new database; `fresh_path` now holds the old one.
            drop(store);
            sync_dir(data_dir);
            std::fs::remove_dir_all(&fresh_path)
                .map_err(|e| io_err("compacted, but cannot remove the old copy", &fresh_path, e))?;
        }
        Err(_) => {
            std::fs::rename(&db, &old_path)
                .map_err(|e| io_err("cannot move the old database to", &old_path, e))?;
            std::fs::rename(&fresh_path, &db).map_err(|e| {
                io_err(
                    "cannot move the compacted database into place (the original is kept at",
                    &old_path,
                    e,
                )
            })?;
            drop(store);
            sync_dir(data_dir);
            std::fs::remove_dir_all(&old_path)
                .map_err(|e| io_err("compacted, but cannot remove the old copy", &old_path, e))?;
        }
    }
    Ok(Compacted {
        bytes_before,
        bytes_after: dir_size(&db),
        entries,
    })
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}
