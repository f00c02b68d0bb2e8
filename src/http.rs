//! The HTTP side of the port: the request head, static files, health, metrics and the upgrade.
//!
//! tungstenite refuses plain GETs before any callback runs, so chatd reads the request head
//! itself (httparse), answers ordinary requests, and for `/ws` writes the 101 response and hands
//! the socket, with any bytes read past the head, to the WebSocket session. Every response
//! closes the connection: browsers open one WebSocket and fetch a few small files, so
//! keep-alive would buy little and cost a parser state machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::WebSocketStream;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};

use crate::log_gate::LogGate;
use crate::metrics::HTTP_REJECTIONS;
use crate::outbox::Outbox;
use crate::state::State;
use crate::transport::{ReadHalf, Socket, Transport};

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Time allowed to send the request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Initial read buffer of a WebSocket connection. Small, because every idle connection pays
/// for it; it grows while a large message is read.
const WS_READ_BUFFER: usize = 256;

/// The web client's files: path, content type, body. `/` is `/index.html`.
const STATIC_FILES: &[(&str, &str, &[u8])] = &[
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_bytes!("../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../web/style.css"),
    ),
    (
        "/sw.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/sw.js"),
    ),
    (
        "/manifest.webmanifest",
        "application/manifest+json",
        include_bytes!("../web/manifest.webmanifest"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_bytes!("../web/icons/favicon.svg"),
    ),
    (
        "/favicon.ico",
        "image/x-icon",
        include_bytes!("../web/icons/favicon.ico"),
    ),
    (
        "/icon-192.png",
        "image/png",
        include_bytes!("../web/icons/icon-192.png"),
    ),
    (
        "/icon-512.png",
        "image/png",
        include_bytes!("../web/icons/icon-512.png"),
    ),
    (
        "/icon-maskable-512.png",
        "image/png",
        include_bytes!("../web/icons/icon-maskable-512.png"),
    ),
    (
        "/apple-touch-icon.png",
        "image/png",
        include_bytes!("../web/icons/apple-touch-icon.png"),
    ),
];

/// What was asked for, as far as routing cares.
pub(crate) struct Head {
    method: String,
    path: String,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    ws_version: Option<String>,
    ws_key: Option<String>,
    host: Option<String>,
    origin: Option<String>,
}

pub(crate) enum HeadError {
    /// Not HTTP, or too large: 400/431, and the `http_rejections` reason.
    Malformed(&'static str, &'static str, &'static str),
    /// The head did not arrive within [`HEAD_TIMEOUT`].
    TimedOut,
    /// The peer went away.
    Gone,
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    /// `--listen`: the web client and the WebSocket, and `/healthz` and `/metrics` unless
    /// `--metrics-listen` moved them.
    Main,
    /// `--metrics-listen`: `/healthz` and `/metrics` only.
    Operations,
}

/// Counts a refused request and logs it, at most a line per reason per interval.
fn rejected(state: &State, peer: SocketAddr, reason: &'static str) {
    state.metrics.http_rejection(reason);
    static GATES: [LogGate; HTTP_REJECTIONS.len()] =
        [const { LogGate::new() }; HTTP_REJECTIONS.len()];
    let Some(index) = HTTP_REJECTIONS.iter().position(|r| *r == reason) else {
        return;
    };
    let Some(unlogged) = GATES[index].pass() else {
        return;
    };
    // Browsers open speculative connections they never use: a head timeout is routine.
    if reason == "head_timeout" {
        tracing::debug!(%peer, reason, unlogged, "HTTP request refused (`unlogged`: like refusals since the last such line)");
    } else {
        tracing::info!(%peer, reason, unlogged, "HTTP request refused (`unlogged`: like refusals since the last such line)");
    }
}

/// A connection that completed the WebSocket handshake, ready for [`crate::session::run`]. The
/// stream is boxed: futures keep a moved-in argument beside the local it moves into
/// (rust-lang/rust#62958), and tungstenite's state would be paid two or three times over in
/// every connection's task.
pub type Upgraded = (Box<WebSocketStream<ReadHalf>>, Arc<Outbox>);

/// Serves one TCP connection: one HTTP request, or the WebSocket handshake. Returns the upgraded
/// connection; its session runs in a task of its own, so that nothing of the HTTP phase stays
/// in the memory of a connection that lives for hours.
pub async fn serve(
    mut stream: Socket,
    peer: SocketAddr,
    state: Arc<State>,
    port: Port,
) -> Option<Upgraded> {
    let read = future::or(read_head(&mut stream), async {
        smol::Timer::after(HEAD_TIMEOUT).await;
        Err(HeadError::TimedOut)
    });
    let (head, rest) = match read.await {
        Ok(parsed) => parsed,
        Err(HeadError::Malformed(status, why, reason)) => {
            rejected(&state, peer, reason);
            let _ = respond(
                &mut stream,
                status,
                "text/plain",
                &[],
                why.as_bytes(),
                false,
            )
            .await;
            return None;
        }
        Err(HeadError::TimedOut) => {
            rejected(&state, peer, "head_timeout");
            return None;
        }
        Err(HeadError::Gone) => return None,
    };
    let is_head = head.method == "HEAD";
    if head.method != "GET" && !is_head {
        let _ = respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            &[("Allow", "GET, HEAD")],
            b"only GET and HEAD are served\n",
            false,
        )
        .await;
        return None;
    }
    let path = head.path.split('?').next().unwrap_or_default();
    let operations_here = match port {
        Port::Main => state.config.metrics_listen.is_none(),
        Port::Operations => true,
    };
    let result = match path {
        "/healthz" | "/metrics" if !operations_here => not_found(&mut stream, is_head).await,
        _ if port == Port::Operations && path != "/healthz" && path != "/metrics" => {
            not_found(&mut stream, is_head).await
        }
        "/ws" => return upgrade(stream, head, rest, peer, &state).await,
        "/healthz" => {
            let body = state.health_json();
            let status = if state.healthy() {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            respond(
                &mut stream,
                status,
                "application/json",
                &[("Cache-Control", "no-store")],
                body.as_bytes(),
                is_head,
            )
            .await
        }
        "/metrics" => {
            let body = state.metrics.render();
            respond(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &[("Cache-Control", "no-store")],
                body.as_bytes(),
                is_head,
            )
            .await
        }
        _ => match static_path(path) {
            Some((content_type, body)) => {
                static_file(&mut stream, content_type, body, is_head).await
            }
            None => not_found(&mut stream, is_head).await,
        },
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "writing HTTP response failed");
    }
    None
}

/// Reads until the end of the request head; returns it and any bytes read past it.
async fn read_head(stream: &mut Socket) -> Result<(Head, Vec<u8>), HeadError> {
    // Read straight into the heap buffer: a buffer on the stack would live in the future of every
    // connection, also after the upgrade.
    let mut buf = Vec::new();
    loop {
        let filled = buf.len();
        buf.resize(filled + 1024, 0);
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(|_| HeadError::Gone)?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(HeadError::Gone);
        }
        if let Some((head, len)) = parse_head(&buf)? {
            return Ok((head, buf[len..].to_vec()));
        }
    }
}

/// Parses a request head from the bytes read so far: the head and its length once complete,
/// `None` while more may come, an error once it is malformed or longer than `MAX_HEAD`.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some((Head::from_request(&request), len))),
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Ok(None),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            Err(HeadError::Malformed(
                "431 Request Header Fields Too Large",
                "request head too large\n",
                "head_too_large",
            ))
        }
        Err(_) => Err(HeadError::Malformed(
            "400 Bad Request",
            "malformed HTTP request\n",
            "malformed",
        )),
    }
}

impl Head {
    fn from_request(request: &httparse::Request<'_, '_>) -> Head {
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(|v| v.trim().to_owned())
        };
        let has_token = |name: &str, token: &str| {
            header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        Head {
            method: request.method.unwrap_or_default().to_owned(),
            path: request.path.unwrap_or_default().to_owned(),
            upgrade_websocket: has_token("Upgrade", "websocket"),
            connection_upgrade: has_token("Connection", "upgrade"),
            ws_version: header("Sec-WebSocket-Version"),
            ws_key: header("Sec-WebSocket-Key"),
            host: header("Host"),
            origin: header("Origin"),
        }
    }
}

/// Answers the upgrade request; returns the WebSocket and its outbox, or `None` after refusing.
async fn upgrade(
    mut stream: Socket,
    head: Head,
    rest: Vec<u8>,
    peer: SocketAddr,
    state: &State,
) -> Option<Upgraded> {
    if !(head.upgrade_websocket && head.connection_upgrade) || head.method != "GET" {
        let _ = respond(
            &mut stream,
            "426 Upgrade Required",
            "text/plain",
            &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
            b"this endpoint speaks WebSocket only\n",
            head.method == "HEAD",
        )
        .await;
        return None;
    }
    if head.ws_version.as_deref() != Some("13") {
        let _ = respond(
            &mut stream,
            "426 Upgrade Required",
            "text/plain",
            &[("Sec-WebSocket-Version", "13")],
            b"unsupported WebSocket version\n",
            false,
        )
        .await;
        return None;
    }
    if !crate::origin::allowed(
        &state.config.allowed_origins,
        head.origin.as_deref(),
        head.host.as_deref(),
    ) {
        rejected(state, peer, "origin");
        let _ = respond(
            &mut stream,
            "403 Forbidden",
            "text/plain",
            &[],
            b"this page's origin may not open a WebSocket here (see --allowed-origins)\n",
            false,
        )
        .await;
        return None;
    }
    let Some(key) = head.ws_key else {
        let _ = respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            &[],
            b"missing Sec-WebSocket-Key\n",
            false,
        )
        .await;
        return None;
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    // Flushed: under TLS the last records of the response may still sit in the session.
    if stream.write_all(response.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return None;
    }
    let max = state.config.max_frame;
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let outbox = Arc::new(
        Outbox::new(
            Transport::new(stream),
            state.config.send_queue,
            state.metrics.frames_out.clone(),
        )
        .with_reply_bounds(state.reply_bounds.clone()),
    );
    let read_half = ReadHalf::new(outbox.clone());
    let ws = if rest.is_empty() {
        WebSocketStream::from_raw_socket(read_half, Role::Server, Some(config)).await
    } else {
        WebSocketStream::from_partially_read(read_half, rest, Role::Server, Some(config)).await
    };
    Some((Box::new(ws), outbox))
}

async fn not_found(stream: &mut Socket, head_only: bool) -> std::io::Result<()> {
    respond(
        stream,
        "404 Not Found",
        "text/plain",
        &[],
        b"not found\n",
        head_only,
    )
    .await
}

/// The content type and body of the web client's file at `path`, if it is one.
fn static_path(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/" { "/index.html" } else { path };
    STATIC_FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|&(_, content_type, body)| (content_type, body))
}

async fn static_file(
    stream: &mut Socket,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    respond(
        stream,
        "200 OK",
        content_type,
        &[
            ("Cache-Control", "no-cache"),
            (
                "Content-Security-Policy",
                "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'",
            ),
            ("Referrer-Policy", "no-referrer"),
        ],
        body,
        head_only,
    )
    .await
}

/// Writes a complete response and closes (no keep-alive).
pub async fn respond(
    stream: &mut Socket,
    status: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes).await?;
    // Flushes and ends the stream (under TLS with close_notify first).
    stream.close().await
}
