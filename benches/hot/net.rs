//! The lean load generator's transport: non-blocking sockets on one level-triggered epoll, a
//! hand-written WebSocket client (RFC 6455: masked text frames out; text, ping and close frames
//! in), one `read` per readiness event and no per-frame allocation on the receive path.
//!
//! It runs on one thread. A connection is an index into [`Net::conns`]; scenarios keep their own
//! per-connection state in a parallel `Vec` and react to [`Ev`]s in the closure they pass to
//! [`Net::pump`].
//!
//! Arrival times: with [`Net::with_arrival_times`], every socket asks the kernel for receive
//! timestamps (`SO_TIMESTAMPNS`) and each read is a `recvmsg` that returns, beside the bytes, the
//! time the last of them entered the socket. On loopback that is stamped inside the server's
//! `write`, so it is the delivery time without the generator's own queueing: when one thread
//! reads 1000 sockets that all became ready within a few ms, the last read can come several ms
//! after its bytes arrived (measured: the floor's p99 at read was 1.5× its own write sweep).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use super::setup::micros_of_wall;

/// A fixed masking key: the server unmasks every byte whatever its value, so the cost it pays is
/// the same as with a random key; the generator XORs a few bytes per frame.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// What happened on a connection.
pub enum Ev<'a> {
    /// The WebSocket handshake completed.
    Opened,
    /// One complete text (or binary) message.
    Text(&'a [u8]),
    /// The connection is gone: `Some(code)` from a Close frame, `None` for EOF, a reset or a
    /// refused/failed connect.
    Closed(Option<u16>),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stage {
    Idle,
    Connecting,
    Upgrading,
    Open,
}

pub struct Conn {
    sock: Option<TcpStream>,
    pub stage: Stage,
    /// When the bytes of the last read arrived in the socket, on `setup::micros`' timeline (only with
    /// [`Net::with_arrival_times`]).
    pub arrived_us: Option<u64>,
    inbuf: Vec<u8>,
    frag: Vec<u8>,
    out: Vec<u8>,
    /// Interest currently registered includes writable.
    writing: bool,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            sock: None,
            stage: Stage::Idle,
            arrived_us: None,
            inbuf: Vec::new(),
            frag: Vec::new(),
            out: Vec::new(),
            writing: false,
        }
    }

    pub fn is_open(&self) -> bool {
        self.stage == Stage::Open
    }

    /// Queues one masked text frame and tries to write it at once (one `write` in the common
    /// case). What the socket does not take is kept and written when it becomes writable.
    pub fn send_text(&mut self, text: &[u8]) {
        self.send_frame(0x1, text);
    }

    fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        if self.stage != Stage::Open {
            return;
        }
        let start = self.out.len();
        self.out.push(0x80 | opcode);
        let n = payload.len();
        if n < 126 {
            self.out.push(0x80 | n as u8);
        } else if n <= 0xffff {
            self.out.push(0x80 | 126);
            self.out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.out.push(0x80 | 127);
            self.out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        self.out.extend_from_slice(&MASK);
        let body = self.out.len();
        self.out.extend_from_slice(payload);
        for (i, b) in self.out[body..].iter_mut().enumerate() {
            *b ^= MASK[i & 3];
        }
        if start == 0 {
            self.flush();
        }
    }

    /// Writes what is pending; false if the connection failed.
    fn flush(&mut self) -> bool {
        let Some(sock) = self.sock.as_mut() else {
            return false;
        };
        while !self.out.is_empty() {
            match sock.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.out.capacity() > 4096 {
            self.out = Vec::new();
        }
        true
    }
}

/// Opens a non-blocking TCP connection (the connect completes later: writable readiness).
fn connect_nonblocking(addr: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::other("IPv4 loopback only"));
    };
    // SAFETY: plain socket syscalls on a descriptor we own; the descriptor is wrapped in a
    // TcpStream (which closes it) before any early return after creation.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = TcpStream::from_raw_fd(fd);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        sock.set_nodelay(true)?;
        Ok(sock)
    }
}

fn enable_timestamps(sock: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a descriptor we own, with a valid int option.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `recvmsg`: the bytes read and, if the kernel attached one, their arrival time on
/// `setup::micros`' timeline.
fn recv_stamped(sock: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one control message holding a timespec, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid starting value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: the iovec and control buffer outlive the call and their lengths are theirs.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut at = None;
    // SAFETY: walks the control messages the kernel wrote into `control`, as CMSG_* require.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                let ns = ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128;
                at = Some(micros_of_wall(std::time::Duration::from_nanos(ns as u64)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, at))
}

/// Level-triggered epoll over all connections of one generator thread.
pub struct Net {
    epfd: i32,
    events: Vec<libc::epoll_event>,
    pub conns: Vec<Conn>,
    scratch: Vec<u8>,
    /// Connections whose connect or handshake is in progress.
    pub pending: usize,
    arrival_times: bool,
}

impl Drop for Net {
    fn drop(&mut self) {
        // SAFETY: closing the epoll descriptor we created.
        unsafe { libc::close(self.epfd) };
    }
}

fn ctl(epfd: i32, op: i32, fd: i32, events: u32, key: usize) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: key as u64,
    };
    // SAFETY: epoll_ctl on descriptors we own, with a valid event struct.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const RD: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
const WR: u32 = libc::EPOLLOUT as u32;

impl Net {
    pub fn new(n: usize) -> Net {
        // SAFETY: creates a new descriptor.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epfd >= 0, "epoll_create1: {}", io::Error::last_os_error());
        Net {
            epfd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
            conns: (0..n).map(|_| Conn::new()).collect(),
            scratch: vec![0; 256 * 1024],
            pending: 0,
            arrival_times: false,
        }
    }

    /// Asks the kernel for each read's arrival time on every connection made from now on
    /// ([`Conn::arrived_us`]).
    pub fn with_arrival_times(mut self) -> Net {
        self.arrival_times = true;
        self
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Grows the table to `n` connections.
    pub fn grow(&mut self, n: usize) {
        while self.conns.len() < n {
            self.conns.push(Conn::new());
        }
    }

    /// Starts connecting connection `i` (which must be idle). Failure to even start (no
    /// descriptors, no ports) is reported as an error; a refused connection arrives later as
    /// `Ev::Closed(None)`.
    pub fn connect(&mut self, i: usize, addr: SocketAddr) -> io::Result<()> {
        assert_eq!(
            self.conns[i].stage,
            Stage::Idle,
            "connect on a busy connection"
        );
        let sock = connect_nonblocking(addr)?;
        if self.arrival_times {
            enable_timestamps(&sock)?;
        }
        ctl(self.epfd, libc::EPOLL_CTL_ADD, sock.as_raw_fd(), WR | RD, i)?;
        let c = &mut self.conns[i];
        c.sock = Some(sock);
        c.stage = Stage::Connecting;
        c.writing = true;
        c.inbuf.clear();
        c.frag.clear();
        c.out.clear();
        self.pending += 1;
        Ok(())
    }

    /// Closes connection `i` from our side (no close handshake: the socket is just closed).
    pub fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let Some(sock) = c.sock.take() {
            let _ = ctl(self.epfd, libc::EPOLL_CTL_DEL, sock.as_raw_fd(), 0, i);
            if matches!(c.stage, Stage::Connecting | Stage::Upgrading) {
                self.pending -= 1;
            }
        }
        c.stage = Stage::Idle;
        c.inbuf = Vec::new();
        c.frag = Vec::new();
        c.out = Vec::new();
        c.writing = false;
    }

    /// Sends a text frame on `i` (ignored unless open); arranges for a later flush if needed.
    pub fn send(&mut self, i: usize, text: &[u8]) {
        self.conns[i].send_text(text);
        self.fix_interest(i);
    }

    fn fix_interest(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let want = !c.out.is_empty() || c.stage == Stage::Connecting;
        if want != c.writing {
            if let Some(sock) = &c.sock {
                let _ = ctl(
                    self.epfd,
                    libc::EPOLL_CTL_MOD,
                    sock.as_raw_fd(),
                    if want { RD | WR } else { RD },
                    i,
                );
                c.writing = want;
            }
        }
    }

    /// Waits up to `timeout` for readiness and handles it: at most one `read` per ready
    /// connection, every complete frame handed to `f(index, conn, event, time_of_read)`.
    /// Returns the number of ready connections. `host` is sent in the upgrade request.
    pub fn pump(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(usize, &mut Conn, Ev<'_>, Instant),
    ) -> usize {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: the buffer is valid for `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd,
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ms,
            )
        };
        if n <= 0 {
            return 0;
        }
        let now = Instant::now();
        for k in 0..n as usize {
            let ev = self.events[k];
            let i = ev.u64 as usize;
            let flags = ev.events;
            self.handle(i, flags, now, &mut f);
        }
        n as usize
    }

    fn handle(
        &mut self,
        i: usize,
        flags: u32,
        now: Instant,
        f: &mut impl FnMut(usize, &mut Conn, Ev<'_>, Instant),
    ) {
        let stage = self.conns[i].stage;
        match stage {
            Stage::Idle => {}
            Stage::Connecting => {
                if flags & (WR | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) == 0 {
                    return;
                }
                let c = &mut self.conns[i];
                let ok = c
                    .sock
                    .as_ref()
                    .is_some_and(|s| matches!(s.take_error(), Ok(None)));
                if !ok {
                    self.close(i);
                    f(i, &mut self.conns[i], Ev::Closed(None), now);
                    return;
                }
                c.stage = Stage::Upgrading;
                c.out.extend_from_slice(
                    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                      Sec-WebSocket-Version: 13\r\n\r\n",
                );
                if !c.flush() {
                    self.close(i);
                    f(i, &mut self.conns[i], Ev::Closed(None), now);
                    return;
                }
                self.fix_interest(i);
            }
            Stage::Upgrading | Stage::Open => {
                if flags & WR != 0 && !self.conns[i].out.is_empty() {
                    if !self.conns[i].flush() {
                        self.close(i);
                        f(i, &mut self.conns[i], Ev::Closed(None), now);
                        return;
                    }
                    self.fix_interest(i);
                }
                if flags & (RD | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) != 0 {
                    self.read(i, now, f);
                }
            }
        }
    }

    fn read(
        &mut self,
        i: usize,
        now: Instant,
        f: &mut impl FnMut(usize, &mut Conn, Ev<'_>, Instant),
    ) {
        let Net {
            conns,
            scratch,
            pending,
            arrival_times,
            ..
        } = self;
        let c = &mut conns[i];
        let Some(sock) = c.sock.as_mut() else { return };
        let got = if *arrival_times {
            recv_stamped(sock, scratch).map(|(n, at)| {
                c.arrived_us = at;
                n
            })
        } else {
            sock.read(scratch)
        };
        let n = match got {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => None,
        };
        let Some(n) = n else {
            self.close(i);
            f(i, &mut self.conns[i], Ev::Closed(None), now);
            return;
        };
        let mut data = std::mem::take(&mut c.inbuf);
        let from_scratch = data.is_empty();
        if !from_scratch {
            data.extend_from_slice(&scratch[..n]);
        }
        let buf: &[u8] = if from_scratch { &scratch[..n] } else { &data };
        let mut pos = 0;
        let mut closed = None;
        if c.stage == Stage::Upgrading {
            match find(buf, b"\r\n\r\n") {
                None => {
                    c.inbuf = buf.to_vec();
                    return;
                }
                Some(end) => {
                    if !buf.starts_with(b"HTTP/1.1 101") {
                        closed = Some(None);
                    } else {
                        c.stage = Stage::Open;
                        pos = end + 4;
                        *pending -= 1;
                        f(i, c, Ev::Opened, now);
                    }
                }
            }
        }
        while closed.is_none() {
            let Some((op, fin, body, next)) = parse_frame(&buf[pos..]) else {
                break;
            };
            let payload = &buf[pos + body..pos + next];
            pos += next;
            match op {
                0x0..=0x2 => {
                    if fin && op != 0 && c.frag.is_empty() {
                        f(i, c, Ev::Text(payload), now);
                    } else {
                        c.frag.extend_from_slice(payload);
                        if fin {
                            let whole = std::mem::take(&mut c.frag);
                            f(i, c, Ev::Text(&whole), now);
                        }
                    }
                }
                0x8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    closed = Some(code);
                }
                0x9 => {
                    let p = payload.to_vec();
                    c.send_frame(0xA, &p);
                }
                _ => {}
            }
        }
        if let Some(code) = closed {
            self.close(i);
            f(i, &mut self.conns[i], Ev::Closed(code), now);
            return;
        }
        let rest = &buf[pos..];
        if !rest.is_empty() {
            let keep = rest.to_vec();
            self.conns[i].inbuf = keep;
        } else if !from_scratch && data.capacity() <= 4096 {
            data.clear();
            self.conns[i].inbuf = data;
        }
        self.fix_interest(i);
    }
}

/// Parses one frame header: (opcode, fin, payload offset, frame length). Unmasks in place is not
/// needed: servers do not mask.
fn parse_frame(buf: &[u8]) -> Option<(u8, bool, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let op = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut hdr) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if masked {
        hdr += 4; // servers never mask; a masked frame is skipped unread
    }
    if buf.len() < hdr + len {
        return None;
    }
    Some((op, fin, hdr, hdr + len))
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of the frame's `"type"` field (chatd, the peer and the floor put it first).
pub fn frame_type(payload: &[u8]) -> &[u8] {
    let key = b"\"type\":\"";
    let at = if payload.get(1..1 + key.len()) == Some(key) {
        1
    } else {
        match find(payload, key) {
            Some(p) => p,
            None => return b"",
        }
    };
    let rest = &payload[at + key.len()..];
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len());
    &rest[..end]
}

/// The unsigned integer after `key` (e.g. `"id":`), if present.
pub fn field_u64(payload: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(payload, key)? + key.len();
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut v: u64 = 0;
    let mut any = false;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(v)
}

/// The string value after `key` (e.g. `"room":"`), without unescaping.
pub fn field_str<'a>(payload: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = find(payload, key)? + key.len();
    let rest = &payload[at..];
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

/// Raises the soft limit on open files to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}
