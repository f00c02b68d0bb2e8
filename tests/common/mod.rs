//! Black-box test harness for `chatd`: spawns the real binary, talks to it over real sockets.
//!
//! Everything here is built from PROTOCOL.md and the CLI contract only; nothing imports the
//! server's crate. Every wait has a deadline; there are no sleeps used for synchronisation.
#![allow(dead_code)]

pub mod redis;

use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tempfile::TempDir;
use tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Message, WebSocket};

/// Default deadline for "the server should answer this promptly".
pub const T: Duration = Duration::from_secs(5);
/// Default password used by the helpers (8..=128 characters).
pub const PASSWORD: &str = "correct-horse-battery";
/// 2^53 - 1: message ids never exceed this.
pub const MAX_SAFE_ID: u64 = (1u64 << 53) - 1;

pub const BIN: &str = env!("CARGO_BIN_EXE_chatd");

/// Whether this run stands a two-node cluster in for each server (`CHATD_TEST_CLUSTER=1`).
pub fn in_cluster_run() -> bool {
    std::env::var_os("CHATD_TEST_CLUSTER").is_some_and(|v| v == "1")
}

/// The data directories of nodes started as stand-ins for one server (`CHATD_TEST_CLUSTER=1`),
/// with their cluster's Redis URL: admin commands given such a directory act on the cluster
/// (tests/admin_common sets `CHATD_CLUSTER` for them).
static CLUSTER_DIRS: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// The Redis URL of the stand-in cluster whose first node uses `dir`, if any.
pub fn cluster_of(dir: &Path) -> Option<String> {
    CLUSTER_DIRS
        .lock()
        .unwrap()
        .iter()
        .find(|(d, _)| d == dir)
        .map(|(_, url)| url.clone())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

static UNIQUE: AtomicU64 = AtomicU64::new(1);
pub fn unique() -> u64 {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------

pub struct TestServer {
    child: Option<Child>,
    dir: Option<TempDir>,
    addr: SocketAddr,
    args: Vec<String>,
    log: Arc<Mutex<Vec<u8>>>,
    /// With `CHATD_TEST_CLUSTER=1`: a second node and the Redis both share.
    cluster: Option<Box<Peers>>,
}

/// The rest of a two-node cluster that stands in for one server (`CHATD_TEST_CLUSTER=1`):
/// [`TestServer::addr`] alternates between the nodes, so consecutive clients of a test are on
/// different nodes and everything the protocol promises must hold across them.
struct Peers {
    other: TestServer,
    turn: AtomicU64,
    /// Dropped last: the nodes go first.
    redis: redis::Redis,
}

impl TestServer {
    /// Start `chatd serve` on 127.0.0.1:0 with a fresh data dir and `--threads 2` (unless the
    /// caller passes its own `--threads`).
    pub fn start(args: &[&str]) -> TestServer {
        TestServer::start_in(TempDir::new().expect("tempdir"), args)
    }

    pub fn start_in(dir: TempDir, args: &[&str]) -> TestServer {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let as_cluster = in_cluster_run() && !args.iter().any(|a| a == "--cluster");
        let redis = as_cluster.then(redis::Redis::start);
        if let Some(redis) = &redis {
            args.extend(["--cluster".to_string(), redis.url()]);
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut server = match spawn_server(dir.path(), "127.0.0.1:0", &args, &log) {
            Ok((child, addr)) => TestServer {
                child: Some(child),
                dir: Some(dir),
                addr,
                args: args.clone(),
                log,
                cluster: None,
            },
            Err(e) => panic!("could not start chatd: {e}"),
        };
        if let Some(redis) = redis {
            CLUSTER_DIRS
                .lock()
                .unwrap()
                .push((server.data_dir().to_path_buf(), redis.url()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            server.cluster = Some(Box::new(Peers {
                other: TestServer::start(&args),
                turn: AtomicU64::new(0),
                redis,
            }));
        }
        server
    }

    /// The server's address; for a cluster, each call the next node's.
    pub fn addr(&self) -> SocketAddr {
        match &self.cluster {
            Some(peers) if peers.turn.fetch_add(1, Ordering::Relaxed) % 2 == 1 => peers.other.addr,
            _ => self.addr,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr())
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    /// Everything the server wrote to stderr so far (all runs of this server).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        let s = self.stderr();
        let start = s.len().saturating_sub(n);
        let start = (start..s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(s.len());
        s[start..].to_string()
    }

    fn signal(&self, sig: &str) {
        signal_pid(self.pid(), sig);
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    pub fn sigint(&self) {
        self.signal("INT");
    }

    /// Wait for the process to exit; panics (with the server's stderr) if it has not exited
    /// within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.try_wait_exit(timeout) {
            Some(st) => st,
            None => panic!(
                "chatd did not exit within {timeout:?}; stderr tail:\n{}",
                self.stderr_tail(4000)
            ),
        }
    }

    /// Like `wait_exit` but returns None on timeout (the process keeps running).
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("server not running");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling a child's exit status: there is no blocking wait with a timeout in std.
            thread::sleep(ms(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().expect("try_wait").is_none(),
        }
    }

    /// SIGKILL and reap (for a cluster, every node: the server crashed).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(peers) = &mut self.cluster {
            peers.other.kill9();
        }
    }

    /// Whether this server is a two-node cluster standing in for one (`CHATD_TEST_CLUSTER=1`).
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Start again on the same data dir and the same address, with the same arguments.
    /// The previous process must have exited (or is killed here after 5 s).
    pub fn restart(&mut self) {
        let args = self.args.clone();
        self.restart_with_args(args);
    }

    pub fn restart_with(&mut self, args: &[&str]) {
        self.restart_with_args(args.iter().map(|s| s.to_string()).collect());
    }

    fn restart_with_args(&mut self, mut args: Vec<String>) {
        if let Some(peers) = &mut self.cluster {
            // Both nodes take the new settings, still in the same cluster.
            if !args.iter().any(|a| a == "--cluster") {
                args.extend(["--cluster".to_string(), peers.redis.url()]);
            }
            if peers.other.is_running() {
                peers.other.sigterm();
                peers.other.wait_exit(Duration::from_secs(10));
            }
            peers.other.restart_with_args(args.clone());
        }
        if self.child.is_some() && self.try_wait_exit(T).is_none() {
            self.kill9();
        }
        self.log
            .lock()
            .unwrap()
            .extend_from_slice(b"\n===== test harness: restart =====\n");
        let listen = self.addr.to_string();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match spawn_server(self.data_dir(), &listen, &args, &self.log) {
                Ok((child, addr)) => {
                    assert_eq!(
                        addr, self.addr,
                        "restarted server must listen on the same address"
                    );
                    self.child = Some(child);
                    self.args = args;
                    return;
                }
                // The port (or the data dir lock) may take a moment to be released.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart attempt failed, retrying: {}", first_line(&e));
                    thread::sleep(ms(200));
                }
                Err(e) => panic!("could not restart chatd: {e}"),
            }
        }
    }

    // Convenience constructors for clients of this server.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr())
    }
    pub fn register(&self, name: &str) -> Client {
        Client::register(self.addr(), name, PASSWORD)
    }
    pub fn login(&self, name: &str, password: &str) -> Client {
        Client::login(self.addr(), name, password)
    }
    pub fn resume(&self, token: &str) -> Client {
        Client::resume(self.addr(), token)
    }
    pub fn raw(&self) -> RawWs {
        RawWs::connect(self.addr())
    }
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr(), path)
    }
    pub fn healthz(&self) -> Value {
        let r = self.get("/healthz");
        assert_eq!(r.status, 200, "GET /healthz: {}", r.text());
        r.json()
    }
    /// One sample from `/metrics` (see [`metric_sample`]).
    pub fn metric(&self, sample: &str) -> f64 {
        metric_sample(&self.metrics(), sample)
    }
    pub fn metrics(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics");
        r.text()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "----- chatd stderr (tail) for {} -----\n{}\n-----",
                self.addr,
                self.stderr_tail(6000)
            );
        }
        self.kill9();
    }
}

/// The value of `sample` (a metric's name with its labels, e.g.
/// `chatd_errors_total{code="internal"}`) in the text of `/metrics`.
pub fn metric_sample(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{metrics}"))
}

/// Sends signal `sig` (`TERM`, `STOP`, …) to process `pid` with kill(1).
pub fn signal_pid(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn spawn_server(
    dir: &Path,
    listen: &str,
    args: &[String],
    log: &Arc<Mutex<Vec<u8>>>,
) -> Result<(Child, SocketAddr), String> {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(dir);
    if !args.iter().any(|a| a == "--threads") {
        cmd.args(["--threads", "2"]);
    }
    // Every test client comes from 127.0.0.1, as a crowd behind one address would: the limits
    // per address are lifted unless a test sets them (tests/security_auth.rs does).
    for (flag, unlimited) in [("--registrations-per-ip", "0"), ("--hash-jobs-per-ip", "0")] {
        if !args.iter().any(|a| a == flag) {
            cmd.args([flag, unlimited]);
        }
    }
    cmd.args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {BIN}: {e}"))?;

    let stderr = child.stderr.take().unwrap();
    let log2 = log.clone();
    let err_thread = thread::spawn(move || {
        let mut r = stderr;
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => log2.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    });

    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                // Keep draining after the first line so the pipe never fills.
                Ok(_) => {
                    let _ = tx.send(line.clone());
                }
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut other_stdout = String::new();
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(ms(1));
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.trim().strip_prefix("listening on ") {
                    let addr: SocketAddr = rest
                        .trim()
                        .parse()
                        .map_err(|e| format!("bad listening line {line:?}: {e}"))?;
                    return Ok((child, addr));
                }
                other_stdout.push_str(&line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = err_thread.join();
                return Err(format!(
                    "no `listening on` line on stdout within 15 s (args {args:?}); stdout: {other_stdout:?}; stderr:\n{}",
                    String::from_utf8_lossy(&log.lock().unwrap())
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let st = child.wait();
                let _ = err_thread.join();
                return Err(format!(
                    "chatd exited ({st:?}) before printing `listening on` (args {args:?}); stdout: {other_stdout:?}; stderr:\n{}",
                    String::from_utf8_lossy(&log.lock().unwrap())
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket client (tungstenite, blocking)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text frame holding JSON.
    Json(Value),
    /// A close frame; the code if it carried one.
    Closed(Option<u16>),
    /// The connection ended without a close frame (EOF, reset, protocol error).
    Ended(String),
    /// Nothing arrived before the deadline.
    Timeout,
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub addr: SocketAddr,
    pub user: String,
    pub token: String,
    pub welcome: Value,
    ended: Option<Event>,
    /// Number of WebSocket Pings seen from the server (answered automatically by tungstenite).
    pub pings: u64,
}

pub struct Joined {
    pub joined: Value,
    pub messages: Vec<Value>,
    pub synced: Value,
    /// Presence events about other users that arrived interleaved with the reply.
    pub presence: Vec<Value>,
}

impl Joined {
    pub fn ids(&self) -> Vec<u64> {
        self.messages.iter().map(id_of).collect()
    }
    pub fn last_id(&self) -> u64 {
        self.synced["last_id"]
            .as_u64()
            .expect("synced.last_id is an unsigned integer")
    }
    pub fn more(&self) -> bool {
        self.synced["more"]
            .as_bool()
            .expect("synced.more is a bool")
    }
    pub fn members(&self) -> Vec<String> {
        sorted_strings(&self.joined["members"])
    }
}

impl Client {
    /// Open a WebSocket to `/ws` without authenticating.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream =
            TcpStream::connect_timeout(&addr, T).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(T)).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let ws = match tungstenite::client(format!("ws://{addr}/ws"), stream) {
            Ok((ws, _resp)) => ws,
            Err(tungstenite::HandshakeError::Failure(e)) => {
                panic!("WebSocket handshake with {addr} failed: {e}")
            }
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                panic!("WebSocket handshake with {addr} interrupted")
            }
        };
        Client::from_ws(ws, addr)
    }

    /// Wrap an already upgraded WebSocket.
    pub fn from_ws(ws: WebSocket<TcpStream>, addr: SocketAddr) -> Client {
        Client {
            ws,
            addr,
            user: String::new(),
            token: String::new(),
            welcome: Value::Null,
            ended: None,
            pings: 0,
        }
    }

    pub fn register(addr: SocketAddr, name: &str, password: &str) -> Client {
        let mut c = Client::connect(addr);
        c.auth_ok(json!({"type":"auth","user":name,"password":password,"register":true}));
        c
    }

    pub fn login(addr: SocketAddr, name: &str, password: &str) -> Client {
        let mut c = Client::connect(addr);
        c.auth_ok(json!({"type":"auth","user":name,"password":password}));
        c
    }

    pub fn resume(addr: SocketAddr, token: &str) -> Client {
        let mut c = Client::connect(addr);
        c.auth_ok(json!({"type":"auth","token":token}));
        c
    }

    /// Send an auth frame and return the next frame (welcome or error).
    pub fn auth(&mut self, frame: Value) -> Value {
        self.send_json(&frame);
        let v = self.recv_json(T);
        if v["type"] == "welcome" {
            self.user = v["user"].as_str().unwrap_or_default().to_string();
            self.token = v["token"].as_str().unwrap_or_default().to_string();
            self.welcome = v.clone();
        }
        v
    }

    /// Send an auth frame and require `welcome`.
    pub fn auth_ok(&mut self, frame: Value) -> Value {
        let v = self.auth(frame.clone());
        assert_eq!(v["type"], "welcome", "auth {frame} should succeed, got {v}");
        v
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    pub fn send_text(&mut self, s: &str) {
        if let Err(e) = self.ws.send(Message::text(s)) {
            panic!("sending {:.200} failed: {e}", s);
        }
    }

    /// Send any message; errors are returned (useful when the server is expected to close).
    pub fn try_send(&mut self, m: Message) -> tungstenite::Result<()> {
        self.ws.send(m)
    }

    /// Send a raw data frame (for example a text frame with invalid UTF-8).
    pub fn send_raw_frame(
        &mut self,
        opcode: OpData,
        payload: Vec<u8>,
        fin: bool,
    ) -> tungstenite::Result<()> {
        self.ws.send(Message::Frame(Frame::message(
            payload,
            OpCode::Data(opcode),
            fin,
        )))
    }

    pub fn recv(&mut self, timeout: Duration) -> Event {
        if let Some(ev) = &self.ended {
            return ev.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Event::Timeout;
            }
            let left = (deadline - now).max(ms(1));
            self.ws.get_mut().set_read_timeout(Some(left)).unwrap();
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_else(|e| {
                        panic!(
                            "server sent a text frame that is not JSON ({e}): {:.300}",
                            t.as_str()
                        )
                    });
                    return Event::Json(v);
                }
                Ok(Message::Binary(b)) => panic!("server sent a binary frame ({} bytes)", b.len()),
                Ok(Message::Ping(_)) => {
                    self.pings += 1;
                }
                Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Close(f)) => {
                    let ev = Event::Closed(f.map(|f| u16::from(f.code)));
                    self.ended = Some(ev.clone());
                    return ev;
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    let ev = Event::Ended(e.to_string());
                    self.ended = Some(ev.clone());
                    return ev;
                }
            }
        }
    }

    /// Next JSON frame; panics on close/timeout.
    pub fn recv_json(&mut self, timeout: Duration) -> Value {
        match self.recv(timeout) {
            Event::Json(v) => v,
            other => panic!(
                "[{}] expected a JSON frame within {timeout:?}, got {other:?}",
                self.user
            ),
        }
    }

    /// The next JSON frame must have this `type`. Against a cluster, other nodes' presence
    /// events reach a connection whenever their node's announcement arrives, not in step with
    /// this connection's own replies: they are skipped unless `presence` is what is expected.
    pub fn expect(&mut self, ty: &str) -> Value {
        let mut v = self.recv_json(T);
        while in_cluster_run() && ty != "presence" && v["type"] == "presence" {
            v = self.recv_json(T);
        }
        assert_eq!(
            v["type"], ty,
            "[{}] expected a `{ty}` frame, got {v}",
            self.user
        );
        v
    }

    /// The next JSON frame must be `error` with this code.
    pub fn expect_error(&mut self, code: &str) -> Value {
        let v = self.recv_json(T);
        assert_eq!(
            v["type"], "error",
            "[{}] expected error {code}, got {v}",
            self.user
        );
        assert_eq!(
            v["code"], code,
            "[{}] expected error {code}, got {v}",
            self.user
        );
        assert!(
            v["message"].is_string(),
            "error frames carry a human readable `message` string: {v}"
        );
        v
    }

    /// Read until the connection closes; JSON frames on the way are returned with the event.
    pub fn read_until_end(&mut self, timeout: Duration) -> (Vec<Value>, Event) {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Event::Json(v) => frames.push(v),
                other => return (frames, other),
            }
        }
    }

    /// The next event must be a close frame; returns its code. JSON frames are not allowed.
    pub fn expect_close(&mut self, timeout: Duration) -> Option<u16> {
        match self.recv(timeout) {
            Event::Closed(c) => c,
            other => panic!(
                "[{}] expected a close frame within {timeout:?}, got {other:?}",
                self.user
            ),
        }
    }

    pub fn expect_close_code(&mut self, code: u16, timeout: Duration) {
        let got = self.expect_close(timeout);
        assert_eq!(
            got,
            Some(code),
            "[{}] expected close code {code}",
            self.user
        );
    }

    /// Read until a JSON frame satisfies `pred`; returns it and the frames skipped on the way.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Event::Json(v) => {
                    if pred(&v) {
                        return (v, skipped);
                    }
                    skipped.push(v);
                }
                other => panic!(
                    "[{}] wanted frame not seen within {timeout:?}: got {other:?}; skipped: {skipped:?}",
                    self.user
                ),
            }
        }
    }

    /// Collect every JSON frame arriving within `period`. Panics if the connection closes.
    /// Used only to prove that something does NOT happen within a period.
    pub fn collect_for(&mut self, period: Duration) -> Vec<Value> {
        let deadline = Instant::now() + period;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.recv(left) {
                Event::Json(v) => out.push(v),
                Event::Timeout => return out,
                other => panic!(
                    "[{}] connection ended unexpectedly: {other:?} (after {out:?})",
                    self.user
                ),
            }
        }
    }

    /// Application-level ping; returns every frame that arrived before the matching pong.
    /// Used after an expected frame has already been read, to look for unexpected extra frames
    /// (presence, duplicates): it gives the server a round trip to emit them. It cannot prove
    /// absence by itself (the protocol does not order replies across frames), so tests use it
    /// only where a missing barrier could hide a bug, never cause a false failure.
    pub fn barrier(&mut self) -> Vec<Value> {
        let t = format!("barrier-{}", unique());
        self.send_json(&json!({"type":"ping","t":t}));
        let (_, skipped) = self.wait_for(T, |v| v["type"] == "pong" && v["t"] == t.as_str());
        skipped
    }

    pub fn join(&mut self, room: &str) -> Joined {
        self.send_json(&json!({"type":"join","room":room}));
        self.read_join_reply(room)
    }

    pub fn join_since(&mut self, room: &str, since: u64) -> Joined {
        self.send_json(&json!({"type":"join","room":room,"since":since}));
        self.read_join_reply(room)
    }

    /// Reads `joined`, the replayed `message`s and `synced`, strictly in that order.
    pub fn read_join_reply(&mut self, room: &str) -> Joined {
        let joined = self.expect("joined");
        assert_eq!(joined["room"], room, "joined.room: {joined}");
        assert!(
            joined["members"].is_array(),
            "joined.members must be an array: {joined}"
        );
        let mut messages = Vec::new();
        let mut presence = Vec::new();
        let synced = loop {
            let v = self.recv_json(T);
            match v["type"].as_str() {
                Some("message") => {
                    assert_eq!(v["room"], room, "replayed message for another room: {v}");
                    check_message_shape(&v);
                    messages.push(v);
                }
                // Other users' presence may interleave when they join concurrently.
                Some("presence") => presence.push(v),
                Some("synced") => break v,
                _ => panic!(
                    "[{}] between `joined` and `synced` only `message` frames may come, got {v}",
                    self.user
                ),
            }
        };
        assert_eq!(synced["room"], room, "synced.room: {synced}");
        assert!(
            synced["last_id"].is_u64(),
            "synced.last_id must be an unsigned integer: {synced}"
        );
        assert!(
            synced["more"].is_boolean(),
            "synced.more must be a bool: {synced}"
        );
        assert_strictly_increasing(
            &messages.iter().map(id_of).collect::<Vec<_>>(),
            "join replay",
        );
        Joined {
            joined,
            messages,
            synced,
            presence,
        }
    }

    pub fn leave(&mut self, room: &str) {
        self.send_json(&json!({"type":"leave","room":room}));
        let v = self.expect("left");
        assert_eq!(v["room"], room, "left.room: {v}");
    }

    /// `send` (optionally with a cid) and return the `ack` (must be the next frame).
    pub fn send_msg(&mut self, room: &str, text: &str, cid: Option<&str>) -> Value {
        let mut f = json!({"type":"send","room":room,"text":text});
        if let Some(c) = cid {
            f["cid"] = json!(c);
        }
        self.send_json(&f);
        let ack = self.expect("ack");
        check_ack_shape(&ack);
        ack
    }

    /// `send`, then require `ack` followed by the sender's own `message` with the same id.
    /// Reads until `n` acks and `n` of the sender's own broadcasts arrived (presence frames
    /// may interleave); returns the acked ids in order.
    pub fn acks_and_echoes(&mut self, n: usize) -> Vec<u64> {
        let (mut acked, mut echoes) = (Vec::new(), 0);
        while acked.len() < n || echoes < n {
            let v = self.recv_json(Duration::from_secs(20));
            match v["type"].as_str() {
                Some("ack") => acked.push(id_of(&v)),
                Some("message") => echoes += 1,
                Some("presence") => {}
                _ => panic!("[{}] unexpected {v}", self.user),
            }
        }
        acked
    }

    pub fn say(&mut self, room: &str, text: &str) -> (Value, Value) {
        let ack = self.send_msg(room, text, None);
        let msg = self.expect("message");
        assert_eq!(
            msg["id"], ack["id"],
            "sender's echo must follow its ack: ack {ack}, message {msg}"
        );
        (ack, msg)
    }

    pub fn say_cid(&mut self, room: &str, text: &str, cid: &str) -> (Value, Value) {
        let ack = self.send_msg(room, text, Some(cid));
        let msg = self.expect("message");
        assert_eq!(
            msg["id"], ack["id"],
            "sender's echo must follow its ack: ack {ack}, message {msg}"
        );
        (ack, msg)
    }

    pub fn history(&mut self, req: Value) -> Value {
        self.send_json(&req);
        self.recv_json(T)
    }

    pub fn who(&mut self, room: &str) -> Vec<String> {
        self.send_json(&json!({"type":"who","room":room}));
        let v = self.expect("members");
        assert_eq!(v["room"], room, "members.room: {v}");
        sorted_strings(&v["users"])
    }

    /// Polite WebSocket close (1000).
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let deadline = Instant::now() + ms(500);
        while Instant::now() < deadline {
            match self.recv(ms(100)) {
                Event::Closed(_) | Event::Ended(_) => break,
                _ => {}
            }
        }
    }

    /// Drop the TCP connection without a WebSocket close or a `leave`.
    pub fn drop_tcp(self) {
        let _ = self.ws.get_ref().shutdown(std::net::Shutdown::Both);
    }

    pub fn tcp(&self) -> &TcpStream {
        self.ws.get_ref()
    }
}

pub fn id_of(v: &Value) -> u64 {
    v["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("`id` must be an unsigned integer: {v}"))
}

pub fn sorted_strings(v: &Value) -> Vec<String> {
    let arr = v
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of strings, got {v}"));
    let mut out: Vec<String> = arr
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("expected a string, got {x}"))
                .to_string()
        })
        .collect();
    out.sort();
    out
}

pub fn names(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The ids of the messages in a `history` reply, in the order given.
pub fn message_ids(reply: &Value) -> Vec<u64> {
    reply["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("a history reply has `messages`: {reply}"))
        .iter()
        .map(id_of)
        .collect()
}

pub fn assert_strictly_increasing(ids: &[u64], what: &str) {
    for w in ids.windows(2) {
        assert!(
            w[0] < w[1],
            "{what}: ids must strictly increase, saw {} then {} (all: {ids:?})",
            w[0],
            w[1]
        );
    }
}

/// Times of things happening now (acks, server_time): within 10 minutes of the local clock.
/// Stored times (replayed or historic messages) may be old: require only a plausible integer
/// of milliseconds since the epoch (after 2001-09-09, so seconds are caught, and not in the
/// future).
pub fn check_stored_time(v: &Value, what: &str) {
    let t = v
        .as_u64()
        .unwrap_or_else(|| panic!("{what} must be an integer of ms since the epoch, got {v}"));
    let now = now_ms();
    assert!(
        t >= 1_000_000_000_000 && t < now + 600_000,
        "{what} = {t} is not a plausible time in ms since the epoch (now {now})"
    );
}

pub fn check_time(v: &Value, what: &str) {
    let t = v
        .as_u64()
        .unwrap_or_else(|| panic!("{what} must be an integer of ms since the epoch, got {v}"));
    let now = now_ms();
    assert!(
        t + 600_000 > now && t < now + 600_000,
        "{what} = {t} is not near now ({now}) in ms since the epoch"
    );
}

pub fn check_message_shape(v: &Value) {
    assert_eq!(v["type"], "message", "{v}");
    assert!(v["room"].is_string(), "message.room: {v}");
    let id = id_of(v);
    assert!(id <= MAX_SAFE_ID, "message id above 2^53-1: {v}");
    assert!(v["user"].is_string(), "message.user: {v}");
    assert!(v["text"].is_string(), "message.text: {v}");
    check_stored_time(&v["ts"], "message.ts");
    if let Some(c) = v.get("cid") {
        assert!(
            c.is_string(),
            "message.cid must be a string when present: {v}"
        );
    }
}

pub fn check_ack_shape(v: &Value) {
    assert_eq!(v["type"], "ack", "{v}");
    assert!(v["room"].is_string(), "ack.room: {v}");
    let id = id_of(v);
    assert!(id <= MAX_SAFE_ID, "ack id above 2^53-1: {v}");
    check_time(&v["ts"], "ack.ts");
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket over TCP (for malformed frames and for clients that never answer pings)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum RawEvent {
    Frame {
        fin: bool,
        opcode: u8,
        payload: Vec<u8>,
    },
    Eof,
    Error(String),
    Timeout,
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub response_head: String,
}

impl RawWs {
    pub fn connect(addr: SocketAddr) -> RawWs {
        let r = RawWs::connect_with_headers(addr, "");
        assert!(
            r.response_head.starts_with("HTTP/1.1 101"),
            "upgrade refused: {}",
            r.response_head
        );
        r
    }

    /// Performs the opening handshake by hand; `extra` is additional header lines, each ending
    /// in \r\n. Does not check the status (see `response_head`).
    pub fn connect_with_headers(addr: SocketAddr, extra: &str) -> RawWs {
        let mut stream =
            TcpStream::connect_timeout(&addr, T).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(T)).unwrap();
        stream.set_write_timeout(Some(T)).unwrap();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        stream.write_all(req.as_bytes()).unwrap();
        // Read byte by byte so nothing after the head is consumed.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut b) {
                Ok(0) => break,
                Ok(_) => head.push(b[0]),
                Err(e) => panic!(
                    "reading handshake response: {e}; got so far {:?}",
                    String::from_utf8_lossy(&head)
                ),
            }
        }
        RawWs {
            stream,
            buf: Vec::new(),
            response_head: String::from_utf8_lossy(&head).into_owned(),
        }
    }

    /// Write one masked frame.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(if fin { 0x80 } else { 0 } | opcode);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out)?;
        self.stream.flush()
    }

    pub fn send_text(&mut self, s: &str) {
        self.send_frame(true, OP_TEXT, s.as_bytes())
            .expect("raw send");
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    fn parse_frame(&mut self) -> Option<RawEvent> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let mut len = (b[1] & 0x7f) as u64;
        let mut pos = 2;
        if len == 126 {
            if b.len() < 4 {
                return None;
            }
            len = u16::from_be_bytes([b[2], b[3]]) as u64;
            pos = 4;
        } else if len == 127 {
            if b.len() < 10 {
                return None;
            }
            len = u64::from_be_bytes(b[2..10].try_into().unwrap());
            pos = 10;
        }
        let mut mask = None;
        if masked {
            if b.len() < pos + 4 {
                return None;
            }
            mask = Some([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]);
            pos += 4;
        }
        let end = pos + len as usize;
        if b.len() < end {
            return None;
        }
        let mut payload = b[pos..end].to_vec();
        if let Some(m) = mask {
            for (i, x) in payload.iter_mut().enumerate() {
                *x ^= m[i % 4];
            }
        }
        self.buf.drain(..end);
        Some(RawEvent::Frame {
            fin,
            opcode,
            payload,
        })
    }

    /// Read one frame (any opcode). Never answers pings.
    pub fn read_frame(&mut self, timeout: Duration) -> RawEvent {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.parse_frame() {
                return f;
            }
            let now = Instant::now();
            if now >= deadline {
                return RawEvent::Timeout;
            }
            self.stream
                .set_read_timeout(Some((deadline - now).max(ms(1))))
                .unwrap();
            let mut tmp = [0u8; 16384];
            match self.stream.read(&mut tmp) {
                Ok(0) => return RawEvent::Eof,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return RawEvent::Error(e.to_string()),
            }
        }
    }

    /// Next text frame as JSON, skipping (and never answering) pings and pongs.
    pub fn read_json(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                RawEvent::Frame {
                    opcode: OP_PING | OP_PONG,
                    ..
                } => continue,
                RawEvent::Frame {
                    opcode: OP_TEXT,
                    fin: true,
                    payload,
                } => {
                    return serde_json::from_slice(&payload).unwrap_or_else(|e| {
                        panic!(
                            "text frame is not JSON ({e}): {:?}",
                            String::from_utf8_lossy(&payload)
                        )
                    })
                }
                other => panic!("expected a JSON text frame, got {other:?}"),
            }
        }
    }

    /// Read frames until a close frame (returns its code, or None for an empty close) or the
    /// end of the stream (Err). Text frames before it are returned too.
    pub fn read_until_close(
        &mut self,
        timeout: Duration,
    ) -> (Vec<Value>, Result<Option<u16>, RawEvent>) {
        let deadline = Instant::now() + timeout;
        let mut texts = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                RawEvent::Frame {
                    opcode: OP_CLOSE,
                    payload,
                    ..
                } => {
                    let code = if payload.len() >= 2 {
                        Some(u16::from_be_bytes([payload[0], payload[1]]))
                    } else {
                        None
                    };
                    return (texts, Ok(code));
                }
                RawEvent::Frame {
                    opcode: OP_TEXT,
                    payload,
                    ..
                } => {
                    texts.push(
                        serde_json::from_slice(&payload)
                            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&payload))),
                    );
                }
                RawEvent::Frame { .. } => {}
                other => return (texts, Err(other)),
            }
        }
    }

    /// Authenticate: register (or log in) and require welcome.
    pub fn auth_register(&mut self, name: &str) -> Value {
        self.send_json(&json!({"type":"auth","user":name,"password":PASSWORD,"register":true}));
        let v = self.read_json(T);
        assert_eq!(v["type"], "welcome", "raw register {name}: {v}");
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Minimal HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: chatd-tests\r\nConnection: close\r\n\r\n"),
    )
}

/// Send a raw request and read one response (Content-Length, chunked, or until EOF).
pub fn http_request(addr: SocketAddr, req: &str) -> HttpResponse {
    let mut s =
        TcpStream::connect_timeout(&addr, T).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let deadline = Instant::now() + T;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let mut eof = false;
    let read_more = |s: &mut TcpStream, buf: &mut Vec<u8>, tmp: &mut [u8], eof: &mut bool| {
        if Instant::now() >= deadline {
            panic!(
                "HTTP response not complete within {T:?}: {:?}",
                String::from_utf8_lossy(buf)
            );
        }
        match s.read(tmp) {
            Ok(0) => *eof = true,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "HTTP response timed out: {:?}",
                    String::from_utf8_lossy(buf)
                )
            }
            Err(_) => *eof = true,
        }
    };
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if eof {
            panic!(
                "connection closed before the end of the HTTP head: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        read_more(&mut s, &mut buf, &mut tmp, &mut eof);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(cl) = get("content-length") {
        let n: usize = cl.parse().expect("content-length");
        while buf.len() < head_end + n && !eof {
            read_more(&mut s, &mut buf, &mut tmp, &mut eof);
        }
        buf[head_end..(head_end + n).min(buf.len())].to_vec()
    } else if get("transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false)
    {
        let mut out = Vec::new();
        let mut pos = head_end;
        loop {
            let line_end = loop {
                if let Some(p) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                    break pos + p;
                }
                if eof {
                    panic!("truncated chunked body");
                }
                read_more(&mut s, &mut buf, &mut tmp, &mut eof);
            };
            let size_str = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16)
                .expect("chunk size");
            pos = line_end + 2;
            if size == 0 {
                break;
            }
            while buf.len() < pos + size + 2 {
                if eof {
                    panic!("truncated chunk");
                }
                read_more(&mut s, &mut buf, &mut tmp, &mut eof);
            }
            out.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
        out
    } else {
        while !eof {
            read_more(&mut s, &mut buf, &mut tmp, &mut eof);
        }
        buf[head_end..].to_vec()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// A one-shot gate threads can wait on with a deadline (std's Barrier has no timeout, and a
/// panicking thread would leave the others waiting forever).
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }
    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }
    pub fn wait(&self, timeout: Duration) {
        let (m, cv) = &*self.0;
        let g = m.lock().unwrap();
        let (g, res) = cv.wait_timeout_while(g, timeout, |open| !*open).unwrap();
        assert!(*g && !res.timed_out(), "gate not opened within {timeout:?}");
    }
}

/// Runs `count` clients on threads of their own, released together. Client `i` registers as
/// and joins the room that `seat(i)` names (user, room); once every one is ready, each runs
/// `body(client, room)` at the same moment. Returns the bodies' results in order of `i`.
pub fn run_together<T: Send + 'static>(
    addr: SocketAddr,
    count: usize,
    seat: impl Fn(usize) -> (String, String),
    body: impl Fn(Client, String) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let body = Arc::new(body);
    let go = Gate::new();
    let (ready_tx, ready_rx) = mpsc::channel();
    let handles: Vec<_> = (0..count)
        .map(|i| {
            let (user, room) = seat(i);
            let (go, ready, body) = (go.clone(), ready_tx.clone(), body.clone());
            thread::spawn(move || {
                let mut c = Client::register(addr, &user, PASSWORD);
                c.join(&room);
                ready.send(()).expect("the test is waiting");
                go.wait(Duration::from_secs(30));
                body(c, room)
            })
        })
        .collect();
    for _ in 0..count {
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("every client registers and joins");
    }
    go.open();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread panicked"))
        .collect()
}

/// Poll `f` until it returns Some, or panic after `timeout` with `what`.
pub fn poll_until<R>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<R>) -> R {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = f() {
            return r;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        thread::sleep(ms(25));
    }
}

impl Client {
    /// Open a WebSocket to `/ws` from the local address `source` (any of 127/8 is loopback on
    /// Linux), without authenticating: a client from another address.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .unwrap_or_else(|e| panic!("bind {source}: {e}"));
        socket
            .connect_timeout(&addr.into(), T)
            .unwrap_or_else(|e| panic!("connect {addr} from {source}: {e}"));
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(T)).unwrap();
        let (ws, _resp) = tungstenite::client(format!("ws://{addr}/ws"), stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake with {addr} from {source}: {e}"));
        Client::from_ws(ws, addr)
    }
}

// =============================================================================================
// Protocol 1.1 (conversations): helpers for tests/v11_*.rs, built from PROTOCOL-1.1.md and the
// server's documented decisions only. One block, appended; nothing above is changed.
// =============================================================================================

/// Lifts the send rate limit (and the room-creation limit) for tests that send a lot.
pub const V11_FAST: &[&str] = &[
    "--rate",
    "100000",
    "--burst",
    "100000",
    "--rooms-per-hour",
    "100000",
];

/// The frame types a v1 server can send (PROTOCOL.md, plus chatd's v1 extension `deleted`).
pub const V1_FRAME_TYPES: &[&str] = &[
    "welcome", "error", "joined", "message", "synced", "left", "ack", "history", "presence",
    "members", "pong", "deleted",
];

/// The frames 1.1 adds that a client can receive without asking (PROTOCOL-1.1.md).
pub const V11_EVENT_TYPES: &[&str] = &["typing", "edited", "deleted", "notify", "read"];

/// The reserved name of the conversation between two users: `dm:` + both names in lower case,
/// sorted (byte order), joined by `+`.
pub fn dm_room(a: &str, b: &str) -> String {
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("dm:{x}+{y}")
}

/// The event's own place in its room.
pub fn seq_of(v: &Value) -> u64 {
    v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("`seq` must be an unsigned integer: {v}"))
}

/// The position of a replayed item in its room: a message's `id`, an event's `seq`.
pub fn position_of(v: &Value) -> u64 {
    match v["type"].as_str() {
        Some("message") => id_of(v),
        Some("edited") | Some("deleted") => seq_of(v),
        _ => panic!("not a replay item: {v}"),
    }
}

/// The sorted keys of a JSON object.
pub fn keys_of(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

pub fn check_edited_shape(v: &Value) {
    assert_eq!(v["type"], "edited", "{v}");
    assert!(v["room"].is_string(), "edited.room: {v}");
    assert!(id_of(v) < seq_of(v), "an edit comes after its message: {v}");
    assert!(seq_of(v) <= MAX_SAFE_ID, "{v}");
    assert!(v["user"].is_string(), "edited.user: {v}");
    assert!(v["text"].is_string(), "edited.text: {v}");
    check_stored_time(&v["ts"], "edited.ts");
}

pub fn check_deleted_shape(v: &Value) {
    assert_eq!(v["type"], "deleted", "{v}");
    assert!(v["room"].is_string(), "deleted.room: {v}");
    assert!(
        id_of(v) < seq_of(v),
        "a delete comes after its message: {v}"
    );
    assert!(seq_of(v) <= MAX_SAFE_ID, "{v}");
    assert!(v["user"].is_string(), "deleted.user: {v}");
    assert!(v.get("text").is_none(), "deleted carries no text: {v}");
    check_stored_time(&v["ts"], "deleted.ts");
}

/// One entry of a `rooms` reply.
pub fn check_room_entry_shape(e: &Value) {
    assert!(e["room"].is_string(), "rooms[].room: {e}");
    for f in ["last_id", "read", "unread", "mentions"] {
        assert!(
            e[f].is_u64(),
            "rooms[].{f} must be an unsigned integer: {e}"
        );
    }
    let last = &e["last"];
    if !last.is_null() {
        check_message_shape(last);
        assert_eq!(last["room"], e["room"], "rooms[].last is of that room: {e}");
        assert!(
            id_of(last) <= e["last_id"].as_u64().unwrap(),
            "last_id is the newest id or seq: {e}"
        );
    }
    assert!(
        e["mentions"].as_u64() <= e["unread"].as_u64(),
        "mentions are counted among the unread: {e}"
    );
}

/// A 1.1 join reply: `joined`, the replayed messages and events in id/seq order, `synced`.
pub struct Replay {
    pub joined: Value,
    /// `message`, `edited` and `deleted` frames, as replayed.
    pub items: Vec<Value>,
    pub synced: Value,
    /// Presence events about other users that arrived interleaved with the reply.
    pub presence: Vec<Value>,
}

impl Replay {
    pub fn read(&self) -> u64 {
        self.joined["read"]
            .as_u64()
            .unwrap_or_else(|| panic!("joined.read must be an unsigned integer: {}", self.joined))
    }
    pub fn last_id(&self) -> u64 {
        self.synced["last_id"].as_u64().unwrap()
    }
    pub fn more(&self) -> bool {
        self.synced["more"].as_bool().unwrap()
    }
    pub fn members(&self) -> Vec<String> {
        sorted_strings(&self.joined["members"])
    }
    /// The replayed `message` frames only.
    pub fn messages(&self) -> Vec<Value> {
        self.items
            .iter()
            .filter(|v| v["type"] == "message")
            .cloned()
            .collect()
    }
    pub fn message_ids(&self) -> Vec<u64> {
        self.messages().iter().map(id_of).collect()
    }
    /// Each item as (type, id, seq): seq is 0 for messages.
    pub fn outline(&self) -> Vec<(String, u64, u64)> {
        self.items
            .iter()
            .map(|v| {
                (
                    v["type"].as_str().unwrap().to_string(),
                    id_of(v),
                    v["seq"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }
}

/// The `message` frame a `history` reply or a replay shows for `m` in its current state.
pub fn current(m: &Value, text: &str, edited_ts: Option<u64>) -> Value {
    let mut v = m.clone();
    v["text"] = json!(text);
    if let Some(t) = edited_ts {
        v["edited_ts"] = json!(t);
    }
    v
}

impl Client {
    /// `join` (1.1): replies may hold `edited` / `deleted` events.
    pub fn join11(&mut self, room: &str) -> Replay {
        self.send_json(&json!({"type":"join","room":room}));
        self.read_replay11(room)
    }

    pub fn join11_since(&mut self, room: &str, since: u64) -> Replay {
        self.send_json(&json!({"type":"join","room":room,"since":since}));
        self.read_replay11(room)
    }

    /// Reads `joined` (which must carry `read`), the replayed items and `synced`, in that order.
    pub fn read_replay11(&mut self, room: &str) -> Replay {
        let joined = self.expect("joined");
        assert_eq!(joined["room"], room, "joined.room: {joined}");
        assert!(joined["members"].is_array(), "joined.members: {joined}");
        assert!(
            joined["read"].is_u64(),
            "1.1: joined carries `read` (0 when never marked): {joined}"
        );
        let mut items = Vec::new();
        let mut presence = Vec::new();
        let synced = loop {
            let v = self.recv_json(T);
            match v["type"].as_str() {
                Some("message") => check_message_shape(&v),
                Some("edited") => check_edited_shape(&v),
                Some("deleted") => check_deleted_shape(&v),
                Some("presence") => {
                    presence.push(v);
                    continue;
                }
                Some("synced") => break v,
                _ => panic!(
                    "[{}] between `joined` and `synced` only replayed messages and events may come, got {v}",
                    self.user
                ),
            }
            assert_eq!(v["room"], room, "replayed item of another room: {v}");
            items.push(v);
        };
        assert_eq!(synced["room"], room, "synced.room: {synced}");
        assert!(synced["last_id"].is_u64(), "synced.last_id: {synced}");
        assert!(synced["more"].is_boolean(), "synced.more: {synced}");
        assert_strictly_increasing(
            &items.iter().map(position_of).collect::<Vec<_>>(),
            "a replay is in id/seq order",
        );
        Replay {
            joined,
            items,
            synced,
            presence,
        }
    }

    /// Nothing at all arrives before a ping barrier's pong.
    pub fn assert_quiet(&mut self, what: &str) {
        let extra = self.barrier();
        assert!(
            extra.is_empty(),
            "[{}] {what}: unexpected frames {extra:?}",
            self.user
        );
    }

    /// The next frame is `error` `code` whose `ref` is `want_ref`.
    pub fn expect_error_ref(&mut self, code: &str, want_ref: &str) -> Value {
        let e = self.expect_error(code);
        assert_eq!(e["ref"], want_ref, "[{}] error ref: {e}", self.user);
        e
    }

    /// Sends `frame`; the next frame must be `error` `code` with `ref` = the frame's cid or type.
    pub fn refused(&mut self, frame: Value, code: &str) -> Value {
        self.send_json(&frame);
        let want_ref = frame
            .get("cid")
            .and_then(|c| c.as_str())
            .or_else(|| frame["type"].as_str())
            .unwrap_or_default()
            .to_string();
        let e = self.recv_json(T);
        assert!(
            e["type"] == "error" && e["code"] == code,
            "[{}] {frame} should get error {code}, got {e}",
            self.user
        );
        assert!(e["message"].is_string(), "{e}");
        assert_eq!(e["ref"], want_ref.as_str(), "[{}] {frame}: {e}", self.user);
        e
    }

    /// `read`: returns the marker echoed to this connection. Live room events (messages,
    /// presence, notifications, typing, edits) may come first; any other frame fails.
    pub fn mark_read(&mut self, room: &str, id: u64) -> u64 {
        self.send_json(&json!({"type":"read","room":room,"id":id}));
        let (v, _live) = self.wait_for(T, |v| !is_live_event(v));
        assert_eq!(
            v["type"], "read",
            "[{}] read {room} {id}: got {v}",
            self.user
        );
        assert_eq!(v["room"], room, "read echo: {v}");
        assert_eq!(keys_of(&v), ["id", "room", "type"], "read echo: {v}");
        id_of(&v)
    }

    /// `{"type":"rooms"}` → the list, each entry's shape checked. Asynchronous events (live
    /// messages, notifications, presence, typing, read echoes, edits) arriving before the reply
    /// are skipped; anything else fails.
    pub fn rooms(&mut self) -> Vec<Value> {
        self.send_json(&json!({"type":"rooms"}));
        let (v, skipped) = self.wait_for(T, |v| v["type"] == "rooms" || v["type"] == "error");
        assert_eq!(v["type"], "rooms", "[{}] rooms reply: {v}", self.user);
        for s in &skipped {
            assert!(
                ["message", "notify", "presence", "typing", "read", "edited", "deleted"]
                    .contains(&s["type"].as_str().unwrap_or("")),
                "[{}] unexpected frame before the rooms reply: {s}",
                self.user
            );
        }
        let list = v["rooms"]
            .as_array()
            .unwrap_or_else(|| panic!("rooms.rooms must be an array: {v}"))
            .clone();
        for e in &list {
            check_room_entry_shape(e);
        }
        list
    }

    /// The names in this user's conversation list, in the order given.
    pub fn room_names(&mut self) -> Vec<String> {
        self.rooms()
            .iter()
            .map(|e| e["room"].as_str().unwrap().to_string())
            .collect()
    }

    /// This user's list entry for `room`, if the room is on the list.
    pub fn room_entry(&mut self, room: &str) -> Option<Value> {
        self.rooms().into_iter().find(|e| e["room"] == room)
    }

    /// `edit` and require its `ack` as the next frame.
    pub fn edit_msg(&mut self, room: &str, id: u64, text: &str, cid: Option<&str>) -> Value {
        let mut f = json!({"type":"edit","room":room,"id":id,"text":text});
        if let Some(c) = cid {
            f["cid"] = json!(c);
        }
        self.send_json(&f);
        let ack = self.expect("ack");
        check_ack_shape(&ack);
        assert_eq!(ack["room"], room, "{ack}");
        ack
    }

    /// `delete` and require its `ack` as the next frame.
    pub fn delete_msg(&mut self, room: &str, id: u64, cid: Option<&str>) -> Value {
        let mut f = json!({"type":"delete","room":room,"id":id});
        if let Some(c) = cid {
            f["cid"] = json!(c);
        }
        self.send_json(&f);
        let ack = self.expect("ack");
        check_ack_shape(&ack);
        assert_eq!(ack["room"], room, "{ack}");
        ack
    }

    /// `edit`, then the ack and the editor's own `edited` broadcast (after the ack).
    pub fn edit_and_echo(&mut self, room: &str, id: u64, text: &str) -> (Value, Value) {
        let ack = self.edit_msg(room, id, text, None);
        let ev = self.expect("edited");
        assert_eq!(
            seq_of(&ev),
            id_of(&ack),
            "edited.seq is the ack's id: {ev} {ack}"
        );
        (ack, ev)
    }

    /// `delete`, then the ack and the deleter's own `deleted` broadcast (after the ack).
    pub fn delete_and_echo(&mut self, room: &str, id: u64) -> (Value, Value) {
        let ack = self.delete_msg(room, id, None);
        let ev = self.expect("deleted");
        assert_eq!(
            seq_of(&ev),
            id_of(&ack),
            "deleted.seq is the ack's id: {ev} {ack}"
        );
        (ack, ev)
    }

    pub fn typing(&mut self, room: &str) {
        self.send_json(&json!({"type":"typing","room":room}));
    }

    /// Reads frames until one of type `ty` arrives; returns it and the frames skipped on the
    /// way (for the caller to check).
    pub fn wait_type(&mut self, ty: &str) -> (Value, Vec<Value>) {
        self.wait_for(T, |v| v["type"] == ty)
    }
}

/// Frames a connection may receive at any moment from others' activity (not replies).
pub fn is_live_event(v: &Value) -> bool {
    [
        "message", "presence", "notify", "typing", "edited", "deleted",
    ]
    .contains(&v["type"].as_str().unwrap_or(""))
}

/// Several clients registered at once (names as given).
pub fn register_all(s: &TestServer, users: &[&str]) -> Vec<Client> {
    users.iter().map(|u| s.register(u)).collect()
}

// ----- end of the protocol 1.1 block ---------------------------------------------------------
