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
//! Only plain TCP today; a TLS stream would be a second variant behind the same two calls.

use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use smol::Async;

use crate::outbox::Outbox;

/// A connection's socket before the WebSocket upgrade (plain TCP).
pub type Socket = Async<TcpStream>;

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
        use std::io::Write;
        (&mut self.socket.get_ref()).write_vectored(bufs)
    }

    /// Writes what the kernel takes now of one buffer, without waiting.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        use std::io::Write;
        (&mut self.socket.get_ref()).write(buf)
    }

    /// Waits until the socket can take more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }

    /// Stops sending (after the Close frame): the peer sees the end of the stream.
    pub fn shutdown_write(&self) {
        let _ = self.socket.get_ref().shutdown(std::net::Shutdown::Write);
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut &self.socket).poll_read(cx, buf)
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
