//! The admin socket: `DATA_DIR/admin.sock`, a Unix domain socket with mode 0600, served by the
//! running server. One JSON [`Request`] per line in; zero or more `{"line": …}` frames (export
//! lines) and then one `{"ok": Reply}` or `{"err": AdminError}` line out. A connection may carry
//! any number of requests, one after the other.
//!
//! A request line may also carry `"progress": true` next to its `cmd`. The server then sends
//! `{"progress": Tick}` frames (see [`super::progress`]) before the reply, at most one every
//! [`PROGRESS_EVERY`], while a long command (`prune`, `rooms prune`) runs. The key is outside
//! [`Request`], so a server that predates it ignores it (serde skips unknown keys) and simply
//! sends none; a client that does not ask never gets one.
//!
//! Commands run on the blocking pool (`smol::unblock`), never on the executor threads, so a
//! long scan or prune does not stall chat. A malformed or oversized request gets an error
//! reply; a command that panics gets an error reply; the server keeps serving either way.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncBufReadExt, AsyncWriteExt};
use serde::{Deserialize, Serialize};
use smol::{Async, Executor};

use super::progress::Tick;
use super::{execute, AdminError, Context, ErrorKind, Reply, Request, MAX_REQUEST_BYTES};
use crate::state::State;
use crate::store::maintenance::Line;

/// File name of the socket inside the data directory.
pub const SOCKET_NAME: &str = "admin.sock";

/// The socket path for a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// One line from server to client.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    /// An export line.
    Line(Line),
    /// How far the command has got (only when the request asked for it).
    Progress(Tick),
    /// The command succeeded.
    Ok(Reply),
    /// The command failed.
    Err(AdminError),
}

/// Least time between two progress frames.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Options a request line may carry next to the request itself.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Options {
    /// Send progress frames.
    #[serde(default)]
    progress: bool,
}

fn encode(frame: &Frame) -> Vec<u8> {
    // Our frames are plain data: serializing them cannot fail.
    let mut bytes = serde_json::to_vec(frame).expect("serializing an admin frame");
    bytes.push(b'\n');
    bytes
}

/// The bound admin socket. Dropping it removes the socket file.
pub struct Listener {
    inner: Async<UnixListener>,
    path: PathBuf,
}

impl Listener {
    /// Binds `DATA_DIR/admin.sock` with mode 0600. Call only while holding the database lock:
    /// that proves no other server owns a socket file found there, so a stale one is removed.
    pub fn bind(data_dir: &Path) -> io::Result<Listener> {
        let path = socket_path(data_dir);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(&path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way; move it",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // With the usual umask the fresh socket is not writable (so not connectable) by others;
        // it becomes owner-only before the first accept.
        let listener = UnixListener::bind(&path)?;
        let secured = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| Async::new(listener));
        match secured {
            Ok(inner) => Ok(Listener { inner, path }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepts admin connections until the task is dropped.
pub async fn serve(listener: Listener, state: Arc<State>, executor: Arc<Executor<'static>>) {
    loop {
        match listener.inner.accept().await {
            Ok((stream, _)) => {
                let state = state.clone();
                executor
                    .spawn(async move {
                        if let Err(e) = handle(stream, state).await {
                            tracing::debug!(error = %e, "admin connection ended with an error");
                        }
                    })
                    .detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting an admin connection failed");
                smol::Timer::after(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

enum Read {
    Line,
    Eof,
    TooLong,
}

async fn read_line(
    reader: &mut futures_lite::io::BufReader<&Async<UnixStream>>,
    buf: &mut Vec<u8>,
) -> io::Result<Read> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Read::Eof
            } else {
                Read::Line
            });
        }
        if let Some(pos) = available.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&available[..pos]);
            reader.consume(pos + 1);
            return Ok(Read::Line);
        }
        let n = available.len();
        buf.extend_from_slice(available);
        reader.consume(n);
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(Read::TooLong);
        }
    }
}

async fn handle(stream: Async<UnixStream>, state: Arc<State>) -> io::Result<()> {
    let mut reader = futures_lite::io::BufReader::new(&stream);
    let mut writer = &stream;
    let mut buf = Vec::new();
    loop {
        match read_line(&mut reader, &mut buf).await? {
            Read::Eof => return Ok(()),
            Read::TooLong => {
                let e = AdminError::usage(format!(
                    "admin request longer than {MAX_REQUEST_BYTES} bytes; send smaller batches"
                ));
                writer.write_all(&encode(&Frame::Err(e))).await?;
                return Ok(());
            }
            Read::Line => {}
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let request: Request = match serde_json::from_slice(&buf) {
            Ok(request) => request,
            Err(e) => {
                let e = AdminError::usage(format!("malformed admin request: {e}"));
                writer.write_all(&encode(&Frame::Err(e))).await?;
                continue;
            }
        };
        let wants_progress = serde_json::from_slice::<Options>(&buf).is_ok_and(|o| o.progress);
        let name = request.name();
        tracing::info!(command = name, "admin command");
        let (tx, rx) = async_channel::bounded::<Vec<u8>>(256);
        let job_state = state.clone();
        let job = smol::unblock(move || {
            let progress_tx = tx.clone();
            let last_sent = std::cell::Cell::new(None::<std::time::Instant>);
            let report = move |tick: &Tick| {
                let now = std::time::Instant::now();
                if last_sent
                    .get()
                    .is_none_or(|last| now.duration_since(last) >= PROGRESS_EVERY)
                {
                    last_sent.set(Some(now));
                    // A client that went away is noticed when the reply is written.
                    let _ = progress_tx.try_send(encode(&Frame::Progress(tick.clone())));
                }
            };
            let ctx = Context {
                store: &job_state.store,
                live: Some(&job_state),
                progress: wants_progress.then_some(&report as &dyn Fn(&Tick)),
            };
            let mut sink = |line: Line| {
                tx.send_blocking(encode(&Frame::Line(line)))
                    .map_err(|_| AdminError::failed("the admin client went away"))
            };
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                execute(&ctx, request, &mut sink)
            }))
            .unwrap_or_else(|_| {
                Err(AdminError::failed(
                    "the command failed unexpectedly; see the server log",
                ))
            })
        });
        let mut client_gone = None;
        while let Ok(bytes) = rx.recv().await {
            if let Err(e) = writer.write_all(&bytes).await {
                client_gone = Some(e);
                break;
            }
        }
        drop(rx);
        let result = job.await;
        if let Err(e) = &result {
            tracing::info!(command = name, error = %e.message, "admin command failed");
        }
        if let Some(e) = client_gone {
            return Err(e);
        }
        let frame = match result {
            Ok(reply) => Frame::Ok(reply),
            Err(e) => Frame::Err(e),
        };
        writer.write_all(&encode(&frame)).await?;
        writer.flush().await?;
    }
}

/// Longest the CLI waits for the next line of a reply.
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// A connection to a running server's admin socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the server of `data_dir`; `Ok(None)` if no server answers there (no socket
    /// file, or a stale one).
    pub fn connect(data_dir: &Path) -> Result<Option<Client>, AdminError> {
        let path = socket_path(data_dir);
        match UnixStream::connect(&path) {
            Ok(stream) => {
                // A hung server must not hang the CLI forever; the bounds are generous because
                // pruning or exporting millions of messages legitimately takes a while.
                stream
                    .set_read_timeout(Some(CALL_TIMEOUT))
                    .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(30))))
                    .map_err(|e| AdminError::failed(format!("cannot use the admin socket: {e}")))?;
                let reader = BufReader::new(stream.try_clone().map_err(|e| {
                    AdminError::failed(format!("cannot use the admin socket: {e}"))
                })?);
                Ok(Some(Client {
                    reader,
                    writer: stream,
                }))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(AdminError::failed(format!(
                "permission denied on the admin socket {}; run chatd admin as the user that runs chatd serve",
                path.display()
            ))),
            Err(e) => Err(AdminError::failed(format!(
                "cannot connect to the admin socket {}: {e}",
                path.display()
            ))),
        }
    }

    /// Sends `request` and waits for its reply, passing export lines to `sink` and, when
    /// `progress` is given, asking for progress frames and passing them to it.
    pub fn call(
        &mut self,
        request: &Request,
        sink: &mut dyn FnMut(Line) -> Result<(), AdminError>,
        progress: Option<super::progress::Report<'_>>,
    ) -> Result<Reply, AdminError> {
        let gone = |e: io::Error| {
            match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => AdminError::failed(format!(
                "the server did not answer within {} minutes; it may still be working (see its log)",
                CALL_TIMEOUT.as_secs() / 60
            )),
            _ => AdminError::failed(format!(
                "lost the connection to the server's admin socket ({e}); is the server shutting down?"
            )),
        }
        };
        let mut value = serde_json::to_value(request)
            .map_err(|e| AdminError::failed(format!("cannot encode the request: {e}")))?;
        if let (Some(_), Some(fields)) = (progress, value.as_object_mut()) {
            fields.insert("progress".into(), serde_json::Value::Bool(true));
        }
        let mut bytes = serde_json::to_vec(&value)
            .map_err(|e| AdminError::failed(format!("cannot encode the request: {e}")))?;
        bytes.push(b'\n');
        self.writer.write_all(&bytes).map_err(gone)?;
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.reader.read_line(&mut line).map_err(gone)?;
            if n == 0 {
                return Err(AdminError::failed(
                    "the server closed the admin connection before answering; is it shutting down?",
                ));
            }
            let frame: Frame = serde_json::from_str(&line).map_err(|e| {
                AdminError::new(
                    ErrorKind::Failed,
                    format!("the server sent a reply this chatd does not understand ({e}); use matching chatd versions"),
                )
            })?;
            match frame {
                Frame::Line(l) => sink(l)?,
                Frame::Progress(tick) => {
                    if let Some(report) = progress {
                        report(&tick);
                    }
                }
                Frame::Ok(reply) => return Ok(reply),
                Frame::Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::maintenance::PruneRule;

    #[test]
    fn the_progress_key_is_ignored_by_the_request_parser() {
        // What a server that predates progress frames does with a new client's request line:
        // it parses the request and ignores the key, so it simply sends no progress.
        let requests = [
            Request::Prune {
                rule: PruneRule {
                    before_ms: Some(5),
                    keep_last: None,
                },
                room: Some("general".into()),
                dry_run: false,
            },
            Request::RoomsPruneEmpty {
                created_before_ms: 7,
                dry_run: true,
                dm: true,
            },
        ];
        for request in requests {
            let mut value = serde_json::to_value(&request).unwrap();
            value
                .as_object_mut()
                .unwrap()
                .insert("progress".into(), true.into());
            let line = serde_json::to_vec(&value).unwrap();
            assert_eq!(serde_json::from_slice::<Request>(&line).unwrap(), request);
            assert!(serde_json::from_slice::<Options>(&line).unwrap().progress);
            let plain = serde_json::to_vec(&request).unwrap();
            assert!(!serde_json::from_slice::<Options>(&plain).unwrap().progress);
        }
    }

    #[test]
    fn progress_frames_are_one_json_line() {
        let frame = Frame::Progress(Tick {
            done: 2_000,
            total: Some(16_000),
            note: Some("room 1 of 4".into()),
        });
        assert_eq!(
            encode(&frame),
            b"{\"progress\":{\"done\":2000,\"total\":16000,\"note\":\"room 1 of 4\"}}\n"
        );
    }
}
