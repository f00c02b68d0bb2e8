//! Shared pieces of the benchmark programs: starting servers (chatd and the Node peer) on
//! loopback, reading their memory, and WebSocket clients.

#![allow(dead_code)] // each benchmark uses a different part of this module

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_lite::StreamExt;
use serde_json::{json, Value};
use smol::net::TcpStream;

/// A server process under measurement, killed on drop.
pub struct ServerProcess {
    pub name: String,
    pub child: Child,
    pub addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(name: &str, mut child: Child, dir: Option<tempfile::TempDir>) -> ServerProcess {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading the server's first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{name} printed {line:?} instead of `listening on ADDR`"))
        .parse()
        .expect("address");
    ServerProcess {
        name: name.into(),
        child,
        addr,
        _dir: dir,
    }
}

/// Starts the chatd binary built with this benchmark on a temporary data directory.
/// Flags that lift chatd's limits per client address and per account for benchmarks.
pub const LIFT_ABUSE_LIMITS: &[&str] = &[
    "--registrations-per-ip",
    "0",
    "--hash-jobs-per-ip",
    "0",
    "--account-quota-mb",
    "0",
];

pub fn start_chatd(name: &str, args: &[&str]) -> ServerProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let child = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        // Every bench client comes from 127.0.0.1 and one account may send for hours: lift the
        // limits per address and the daily quota (so a bench must not pass these flags itself).
        .args(LIFT_ABUSE_LIMITS)
        .args([
            "--max-connections-per-ip",
            "1000000",
            "--max-unauthenticated-per-ip",
            "1000000",
            "--max-connections-per-account",
            "1000000",
            "--reserved-connections",
            "0",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chatd");
    wait_listening(name, child, Some(dir))
}

/// Starts the Node `ws` peer (benches/peer/server.mjs), installing its one dependency if needed.
pub fn start_peer() -> Option<ServerProcess> {
    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer");
    if !peer.join("node_modules/ws").exists() {
        let installed = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&peer)
            .status();
        if !matches!(installed, Ok(s) if s.success()) {
            eprintln!(
                "skipping the Node peer: `npm install` in {} failed",
                peer.display()
            );
            return None;
        }
    }
    let child = Command::new("node")
        .arg(peer.join("server.mjs"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(wait_listening("node ws peer", child, None))
}

/// Resident memory of a process in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `addr`'s `/ws`.
pub async fn connect(addr: SocketAddr) -> Ws {
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    tcp.set_nodelay(true).ok();
    let (ws, _) = async_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .expect("WebSocket handshake");
    ws
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send");
}

/// The next JSON frame, skipping control frames; panics after `timeout`.
pub async fn recv(ws: &mut Ws, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let next = futures_lite::future::or(async { ws.next().await }, async {
            smol::Timer::at(deadline).await;
            panic!("no frame within {timeout:?}")
        })
        .await;
        match next {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON frame"),
            Some(Ok(Message::Close(c))) => panic!("closed by server: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("read error: {e}"),
            None => panic!("connection ended"),
        }
    }
}

/// Reads until a frame of type `kind` arrives.
pub async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let v = recv(ws, Duration::from_secs(30)).await;
        if v["type"] == kind {
            return v;
        }
        if v["type"] == "error" {
            panic!("server error while waiting for {kind}: {v}");
        }
    }
}

/// Registers `user` and returns the connection and its token.
pub async fn register(addr: SocketAddr, user: &str) -> (Ws, String) {
    let mut ws = connect(addr).await;
    send(
        &mut ws,
        json!({"type":"auth","user":user,"password":"benchmark-password","register":true}),
    )
    .await;
    let welcome = recv_type(&mut ws, "welcome").await;
    let token = welcome["token"].as_str().unwrap_or_default().to_owned();
    (ws, token)
}

/// Percentile of sorted microsecond samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}
