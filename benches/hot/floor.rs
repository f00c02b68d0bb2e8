//! The floor: the least work a server can do for a fan-out, without any chatd code. One thread,
//! one epoll, non-blocking sockets. It accepts WebSocket connections (minimal handshake), answers
//! the protocol subset the generator uses (auth → welcome, join → joined + synced, send → ack +
//! broadcast, ping → pong), and for a `send` builds the message's unmasked frame bytes once and
//! writes them to every member with one `write` each (a remainder, if a socket is full, is kept
//! and written when it drains). It times each sweep over the members; `{"type":"floor_stats"}`
//! returns (and resets) those times.
//!
//! With a journal (the durable floor) it is the least work a server that stores its messages can
//! do: the sends read in one turn of the event loop are written to the journal with one `pwrite`
//! and one `sync_data` (`fdatasync`, what makes chatd's group commits survive a power loss), and
//! only then acknowledged and broadcast, with one `write` per connection for all it gets from that
//! turn. No thread hand-off, no index, no parsing beyond the send's JSON. The journal is a ring
//! over a file written out in full before serving, so a sync never has to commit new blocks or a
//! new file size. Its lock-step round trip is one loopback round trip plus one such sync: a lower
//! bound for a durable ack on this machine.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::{json, Value};

struct FConn {
    sock: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    upgraded: bool,
    writing: bool,
    user: String,
    rooms: Vec<String>,
}

const LISTENER: u64 = u64::MAX;
const RD: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
const WR: u32 = libc::EPOLLOUT as u32;

fn ctl(epfd: i32, op: i32, fd: i32, events: u32, key: u64) {
    let mut ev = libc::epoll_event { events, u64: key };
    // SAFETY: epoll_ctl on descriptors we own.
    unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) };
}

/// An unmasked server frame (FIN + opcode) around `payload`.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        f.push(n as u8);
    } else if n <= 0xffff {
        f.push(126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

struct Floor {
    epfd: i32,
    conns: HashMap<u64, FConn>,
    rooms: HashMap<String, Vec<u64>>,
    next_id: u64,
    sweeps_us: Vec<u32>,
    journal: Option<Journal>,
}

/// The durable floor's log: what this turn of the event loop read, not yet on disk, and what to
/// send once it is.
struct Journal {
    file: File,
    /// Where the next group commit goes; back to 0 when it would pass [`JOURNAL_BYTES`].
    at: u64,
    unsynced: Vec<u8>,
    held: Vec<Held>,
}

/// Size of the durable floor's ring: far more than one turn of its event loop reads.
const JOURNAL_BYTES: u64 = 64 << 20;

/// Creates the durable floor's journal at `path`, written out in full and synced.
pub fn open_journal(path: &std::path::Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    for chunk in 0..JOURNAL_BYTES / zeros.len() as u64 {
        file.write_all_at(&zeros, chunk * zeros.len() as u64)?;
    }
    file.sync_all()?;
    Ok(file)
}

/// A send whose ack and broadcast wait for the journal's sync.
struct Held {
    sender: u64,
    ack: Vec<u8>,
    room: String,
    message: Vec<u8>,
}

impl Floor {
    /// Writes `bytes` to connection `k`: appended to its remainder if it has one, else one
    /// `write`, keeping what the socket did not take.
    fn write_to(&mut self, k: u64, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&k) else {
            return;
        };
        if !c.out.is_empty() {
            c.out.extend_from_slice(bytes);
            return;
        }
        let n = match c.sock.write(bytes) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => bytes.len(), // the read side will see the failure and drop it
        };
        if n < bytes.len() {
            c.out.extend_from_slice(&bytes[n..]);
            if !c.writing {
                ctl(
                    self.epfd,
                    libc::EPOLL_CTL_MOD,
                    c.sock.as_raw_fd(),
                    RD | WR,
                    k,
                );
                c.writing = true;
            }
        }
    }

    fn reply(&mut self, k: u64, v: &Value) {
        let f = frame(0x1, v.to_string().as_bytes());
        self.write_to(k, &f);
    }

    /// Acknowledges a send to its sender and writes its message to every member of the room.
    fn deliver(&mut self, sender: u64, ack: &[u8], room: &str, message: &[u8]) {
        self.write_to(sender, ack);
        let members = self.rooms.get(room).cloned().unwrap_or_default();
        let start = Instant::now();
        for m in members {
            self.write_to(m, message);
        }
        self.sweeps_us.push(start.elapsed().as_micros() as u32);
    }

    /// The durable floor's group commit, once per turn of the event loop: one write and one sync
    /// for everything this turn read, then each connection's acks and messages, in the order of
    /// the sends, with one write per connection.
    fn commit(&mut self) {
        let Some(journal) = &mut self.journal else {
            return;
        };
        if journal.held.is_empty() {
            return;
        }
        let len = journal.unsynced.len() as u64;
        if journal.at + len > JOURNAL_BYTES {
            journal.at = 0;
        }
        journal
            .file
            .write_all_at(&journal.unsynced, journal.at)
            .expect("writing the floor's journal");
        journal.at += len;
        journal
            .file
            .sync_data()
            .expect("syncing the floor's journal");
        journal.unsynced.clear();
        let held = std::mem::take(&mut journal.held);
        let mut outgoing: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut slot: HashMap<u64, usize> = HashMap::new();
        let mut push = |k: u64, bytes: &[u8]| {
            let i = *slot.entry(k).or_insert_with(|| {
                outgoing.push((k, Vec::new()));
                outgoing.len() - 1
            });
            outgoing[i].1.extend_from_slice(bytes);
        };
        for h in &held {
            push(h.sender, &h.ack);
            for &m in self.rooms.get(&h.room).into_iter().flatten() {
                push(m, &h.message);
            }
        }
        for (k, bytes) in outgoing {
            self.write_to(k, &bytes);
        }
    }

    fn drop_conn(&mut self, k: u64) {
        if let Some(c) = self.conns.remove(&k) {
            ctl(self.epfd, libc::EPOLL_CTL_DEL, c.sock.as_raw_fd(), 0, k);
            for r in &c.rooms {
                if let Some(m) = self.rooms.get_mut(r) {
                    m.retain(|&x| x != k);
                }
            }
        }
    }

    fn on_text(&mut self, k: u64, text: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(text) else {
            return;
        };
        match v["type"].as_str().unwrap_or("") {
            "auth" => {
                let user = v["user"].as_str().unwrap_or("token-user").to_owned();
                if let Some(c) = self.conns.get_mut(&k) {
                    c.user = user.clone();
                }
                self.reply(
                    k,
                    &json!({"type":"welcome","user":user,"token":v["token"].as_str().unwrap_or("t"),"server_time":super::procs::now_ms()}),
                );
            }
            "join" => {
                let room = v["room"].as_str().unwrap_or("").to_owned();
                let members = self.rooms.entry(room.clone()).or_default();
                if !members.contains(&k) {
                    members.push(k);
                }
                if let Some(c) = self.conns.get_mut(&k) {
                    c.rooms.push(room.clone());
                }
                self.reply(k, &json!({"type":"joined","room":room,"members":[]}));
                self.reply(
                    k,
                    &json!({"type":"synced","room":room,"last_id":self.next_id,"more":false}),
                );
            }
            "send" => {
                self.next_id += 1;
                let id = self.next_id;
                let ts = super::procs::now_ms();
                let room = v["room"].as_str().unwrap_or("").to_owned();
                let user = self
                    .conns
                    .get(&k)
                    .map(|c| c.user.clone())
                    .unwrap_or_default();
                let mut ack = json!({"type":"ack","room":room,"id":id,"ts":ts});
                let mut msg = json!({"type":"message","room":room,"id":id,"user":user,"text":v["text"],"ts":ts});
                if let Some(cid) = v.get("cid").filter(|c| c.is_string()) {
                    ack["cid"] = cid.clone();
                    msg["cid"] = cid.clone();
                }
                let ack = frame(0x1, ack.to_string().as_bytes());
                // Built once; the same bytes go to every member.
                let message = frame(0x1, msg.to_string().as_bytes());
                match &mut self.journal {
                    Some(journal) => {
                        journal.unsynced.extend_from_slice(&message);
                        journal.held.push(Held {
                            sender: k,
                            ack,
                            room,
                            message,
                        });
                    }
                    None => self.deliver(k, &ack, &room, &message),
                }
            }
            "ping" => self.reply(k, &json!({"type":"pong","t":v["t"]})),
            "floor_stats" => {
                let mut s = std::mem::take(&mut self.sweeps_us);
                s.sort_unstable();
                let pick = |p: f64| {
                    s.get(((s.len().max(1) - 1) as f64 * p).round() as usize)
                        .copied()
                        .unwrap_or(0)
                };
                let mean = s.iter().map(|&x| u64::from(x)).sum::<u64>() / (s.len().max(1) as u64);
                let reply = json!({"type":"floor_stats","sweeps":s.len(),"p50_us":pick(0.5),"p99_us":pick(0.99),"mean_us":mean});
                self.reply(k, &reply);
            }
            _ => {}
        }
    }

    /// Handles readable data on `k`; false if the connection is finished.
    fn on_readable(&mut self, k: u64, scratch: &mut [u8]) -> bool {
        let Some(c) = self.conns.get_mut(&k) else {
            return false;
        };
        match c.sock.read(scratch) {
            Ok(0) => return false,
            Ok(n) => c.inbuf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
        if !c.upgraded {
            let Some(end) = super::net::find(&c.inbuf, b"\r\n\r\n") else {
                return c.inbuf.len() < 16 * 1024;
            };
            let head = String::from_utf8_lossy(&c.inbuf[..end]).into_owned();
            c.inbuf.drain(..end + 4);
            let key = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            });
            let Some(key) = key else { return false };
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            c.upgraded = true;
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            self.write_to(k, resp.as_bytes());
        }
        // Client frames: masked; text, ping, close (no fragmentation from our generator).
        loop {
            let Some(c) = self.conns.get_mut(&k) else {
                return false;
            };
            let buf = &c.inbuf;
            if buf.len() < 2 {
                break;
            }
            let op = buf[0] & 0x0f;
            let masked = buf[1] & 0x80 != 0;
            let (len, mut hdr) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            let mask = if masked && buf.len() >= hdr + 4 {
                let m = [buf[hdr], buf[hdr + 1], buf[hdr + 2], buf[hdr + 3]];
                hdr += 4;
                m
            } else if masked {
                break;
            } else {
                [0; 4]
            };
            if buf.len() < hdr + len {
                break;
            }
            let mut payload = buf[hdr..hdr + len].to_vec();
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            c.inbuf.drain(..hdr + len);
            match op {
                0x1 | 0x2 => self.on_text(k, &payload),
                0x8 => return false,
                0x9 => {
                    let f = frame(0xA, &payload);
                    self.write_to(k, &f);
                }
                _ => {}
            }
        }
        true
    }

    fn on_writable(&mut self, k: u64) {
        let Some(c) = self.conns.get_mut(&k) else {
            return;
        };
        while !c.out.is_empty() {
            match c.sock.write(&c.out) {
                Ok(n) if n > 0 => {
                    c.out.drain(..n);
                }
                _ => break,
            }
        }
        if c.out.is_empty() && c.writing {
            ctl(self.epfd, libc::EPOLL_CTL_MOD, c.sock.as_raw_fd(), RD, k);
            c.writing = false;
        }
    }
}

/// Serves on `listener` until `stop` is set (checked every 100 ms); with `journal`, as the
/// durable floor (module documentation).
pub fn serve(listener: TcpListener, stop: &AtomicBool, journal: Option<File>) {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    // SAFETY: creates a new descriptor, closed at the end.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epfd >= 0);
    ctl(
        epfd,
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        libc::EPOLLIN as u32,
        LISTENER,
    );
    let mut floor = Floor {
        epfd,
        conns: HashMap::new(),
        rooms: HashMap::new(),
        next_id: 0,
        sweeps_us: Vec::new(),
        journal: journal.map(|file| Journal {
            file,
            at: 0,
            unsynced: Vec::new(),
            held: Vec::new(),
        }),
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut scratch = vec![0u8; 64 * 1024];
    let mut next_key = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the buffer holds `events.len()` entries.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, 100) };
        for e in events.iter().take(n.max(0) as usize).copied() {
            let key = e.u64;
            if key == LISTENER {
                while let Ok((sock, _)) = listener.accept() {
                    let _ = sock.set_nonblocking(true);
                    let _ = sock.set_nodelay(true);
                    let k = next_key;
                    next_key += 1;
                    ctl(epfd, libc::EPOLL_CTL_ADD, sock.as_raw_fd(), RD, k);
                    floor.conns.insert(
                        k,
                        FConn {
                            sock,
                            inbuf: Vec::new(),
                            out: Vec::new(),
                            upgraded: false,
                            writing: false,
                            user: String::new(),
                            rooms: Vec::new(),
                        },
                    );
                }
                continue;
            }
            if e.events & WR != 0 {
                floor.on_writable(key);
            }
            if e.events & (RD | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) != 0
                && !floor.on_readable(key, &mut scratch)
            {
                floor.drop_conn(key);
            }
        }
        floor.commit();
    }
    let keys: Vec<u64> = floor.conns.keys().copied().collect();
    for k in keys {
        floor.drop_conn(k);
    }
    // SAFETY: closing our epoll descriptor.
    unsafe { libc::close(epfd) };
}
