//! The byte stream under a WebSocket connection, split into the two directions chatd drives
//! differently.
//!
//! - Writes bypass tungstenite. Server frames are built once ([`crate::wire::Encoded`]) and
//!   written with non-blocking `writev` calls by whichever thread has them (see
//!   [`crate::outbox`]); only a remainder the kernel would not take waits for the socket to
//!   become writable. One delivery is one syscall.
//! - Reads go through tungstenite (framing, unmasking, UTF-8 and size checks) over a
//!   [`ReadHalf`], whose write side hands the few bytes tungstenite itself produces (Pong
//!   replies, the echo of a peer's Close) to the connection's outbox, so every byte leaves
//!   through one ordered queue.
//!
//! The socket is plain TCP or TLS ([`Socket`]), as smol's websocket-server example wraps both
//! in one type. TLS keeps the same two calls: a write encrypts into the connection's rustls
//! session and sends the records with the same non-blocking write; records the kernel would not
//! take stay in the session ([`Transport::flush_unsent`]) and the outbox's writer sends them when the
//! socket drains. Lock order: the outbox's lock, then the TLS session's, never the reverse; the
//! reader takes only the TLS session's.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use rustls::ServerConnection;
use smol::Async;

use crate::outbox::Outbox;

/// A connection's socket: plain TCP, or TCP under a TLS session.
pub enum Socket {
    /// `ws://` and `http://`.
    Plain(Async<TcpStream>),
    /// `wss://` and `https://`.
    Tls(Box<TlsSocket>),
}

/// TCP under a rustls server session. The session is behind a lock because the reader and
/// every writer share it (rustls keeps both directions in one object).
pub struct TlsSocket {
    tcp: Async<TcpStream>,
    session: Mutex<ServerConnection>,
}

impl Socket {
    /// Wraps an accepted TCP stream in a TLS session that has yet to shake hands.
    pub fn tls(tcp: Async<TcpStream>, session: ServerConnection) -> Socket {
        Socket::Tls(Box::new(TlsSocket {
            tcp,
            session: Mutex::new(session),
        }))
    }

    fn tcp(&self) -> &Async<TcpStream> {
        match self {
            Socket::Plain(tcp) => tcp,
            Socket::Tls(tls) => &tls.tcp,
        }
    }

    fn poll_read_shared(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Socket::Plain(tcp) => Pin::new(&mut &*tcp).poll_read(cx, buf),
            Socket::Tls(tls) => tls.poll_read(cx, buf),
        }
    }
}

impl TlsSocket {
    fn session(&self) -> MutexGuard<'_, ServerConnection> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the session's pending records; `Ok(false)` when the kernel would not take them all.
    fn send_records(&self, session: &mut ServerConnection) -> io::Result<bool> {
        while session.wants_write() {
            match session.write_tls(&mut self.tcp.get_ref()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Encrypts what the session takes of `bufs` and sends what the kernel takes of the records.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut session = self.session();
        // Records from an earlier write go first; until they are out, nothing new is taken, so
        // a session never holds more than one write's worth of records.
        if !self.send_records(&mut session)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = session.writer().write_vectored(bufs)?;
        if taken == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.send_records(&mut session)?;
        Ok(taken)
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut session = self.session();
            match session.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                // The peer closed TCP without close_notify: an ordinary end of stream here,
                // since WebSocket frames carry their own lengths.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Handshake replies and alerts must leave before the peer can say more.
            if !self.send_records(&mut session)? {
                drop(session);
                ready!(self.tcp.poll_writable(cx))?;
                continue;
            }
            match session.read_tls(&mut self.tcp.get_ref()) {
                Ok(0) => return Poll::Ready(Ok(0)),
                Ok(_) => {
                    if let Err(e) = session.process_new_packets() {
                        // Tell the peer why (the alert rustls queued), then fail the read.
                        let _ = self.send_records(&mut session);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(session);
                    ready!(self.tcp.poll_readable(cx))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_send_records(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.send_records(&mut self.session())? {
                return Poll::Ready(Ok(()));
            }
            ready!(self.tcp.poll_writable(cx))?;
        }
    }
}

/// Before the upgrade the HTTP phase reads and writes the socket as an ordinary stream.
impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_read_shared(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Socket::Tls(tls) => loop {
                match tls.try_write_vectored(&[IoSlice::new(buf)]) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready!(tls.tcp.poll_writable(cx))?
                    }
                    result => return Poll::Ready(result),
                }
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Socket::Tls(tls) => tls.poll_send_records(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_close(cx),
            Socket::Tls(tls) => {
                tls.session().send_close_notify();
                ready!(tls.poll_send_records(cx))?;
                Poll::Ready(tls.tcp.get_ref().shutdown(std::net::Shutdown::Write))
            }
        }
    }
}

/// The socket of one connection, shared by its reader and every writer.
pub struct Transport {
    socket: Socket,
}

impl Transport {
    /// Wraps a connected, non-blocking socket.
    pub fn new(socket: Socket) -> Transport {
        Transport { socket }
    }

    /// Writes what the kernel takes now, without waiting.
    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match &self.socket {
            Socket::Plain(tcp) => (&mut tcp.get_ref()).write_vectored(bufs),
            Socket::Tls(tls) => tls.try_write_vectored(bufs),
        }
    }

    /// Writes what the kernel takes now of one buffer, without waiting.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match &self.socket {
            Socket::Plain(tcp) => (&mut tcp.get_ref()).write(buf),
            Socket::Tls(tls) => tls.try_write_vectored(&[IoSlice::new(buf)]),
        }
    }

    /// Sends bytes an earlier write accepted but the kernel did not take (TLS records);
    /// `Ok(true)` once nothing is left. Plain TCP never leaves any.
    pub fn flush_unsent(&self) -> io::Result<bool> {
        match &self.socket {
            Socket::Plain(_) => Ok(true),
            Socket::Tls(tls) => tls.send_records(&mut tls.session()),
        }
    }

    /// Waits until the socket can take more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        self.socket.tcp().writable().await
    }

    /// Stops sending (after the Close frame): the peer sees the end of the stream.
    pub fn shutdown_write(&self) {
        if let Socket::Tls(tls) = &self.socket {
            let mut session = tls.session();
            session.send_close_notify();
            let _ = tls.send_records(&mut session);
        }
        let _ = self
            .socket
            .tcp()
            .get_ref()
            .shutdown(std::net::Shutdown::Write);
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.socket.poll_read_shared(cx, buf)
    }
}

/// What tungstenite reads from and writes to: the socket's read side, and the outbox.
pub struct ReadHalf {
    outbox: Arc<Outbox>,
}

impl ReadHalf {
    /// The read side of the outbox's socket; tungstenite's own writes go to the outbox.
    pub fn new(outbox: Arc<Outbox>) -> ReadHalf {
        ReadHalf { outbox }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.outbox.transport().poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.outbox.control(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
