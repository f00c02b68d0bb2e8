//! Half-open peers: a client process frozen with SIGSTOP keeps its TCP connection open (the
//! kernel still acknowledges segments) but never answers a ping or sends a frame again. The
//! server must drop it within the idle timeout and announce it offline after the presence grace
//! period, like any client that vanished without `leave` (PROTOCOL.md "Heartbeats", "Presence").
//!
//! The frozen client is this test binary run again as a child process (`frozen_client_child`
//! does nothing unless `CHATD_FROZEN_CLIENT` is set), so SIGSTOP freezes a real peer, not a
//! thread of the test.
mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const IDLE: Duration = Duration::from_millis(1500);
const GRACE: Duration = Duration::from_millis(1000);
/// How long the server waits for a peer to answer its Close before it drops the socket
/// (`session::CLOSE_LINGER`): a frozen peer never answers, so its rooms are left (and the grace
/// period starts) only after it.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The child's side: resume, join, say so on stdout, then keep reading (tungstenite answers the
/// server's pings while it reads) until the parent kills it.
#[test]
fn frozen_client_child() {
    let Ok(spec) = std::env::var("CHATD_FROZEN_CLIENT") else {
        return;
    };
    let mut parts = spec.split_whitespace();
    let (Some(addr), Some(token), Some(room)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("CHATD_FROZEN_CLIENT is `ADDR TOKEN ROOM`, got {spec:?}");
    };
    let mut c = Client::resume(addr.parse().expect("address"), token);
    c.join(room);
    println!("JOINED");
    loop {
        match c.recv(Duration::from_secs(3600)) {
            Event::Closed(_) | Event::Ended(_) => return,
            _ => {}
        }
    }
}

struct ChildClient(Child);

impl Drop for ChildClient {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_client_frozen_with_sigstop_is_dropped_and_shown_offline() {
    let s = TestServer::start(&[
        "--ping-interval",
        "300ms",
        "--idle-timeout",
        "1500ms",
        "--presence-grace",
        "1s",
    ]);
    let frozen_token = s.register("frozen").token;
    let mut watcher = s.register("watcher");
    watcher.join("r");

    let mut child = ChildClient(
        Command::new(std::env::current_exe().expect("test binary"))
            .args(["frozen_client_child", "--exact", "--nocapture"])
            .env(
                "CHATD_FROZEN_CLIENT",
                format!("{} {frozen_token} r", s.addr()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the frozen client"),
    );
    let stdout = child.0.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.trim() == "JOINED" => break,
            Ok(_) => {}
            Err(e) => panic!("the child client never joined: {e}"),
        }
    }
    let (online, _) = watcher.wait_for(T, |v| v["type"] == "presence");
    assert_eq!(online["user"], "frozen");
    assert_eq!(online["state"], "online");

    // Alive while it answers pings: several idle timeouts pass without a drop.
    let lively = watcher.collect_for(IDLE * 2);
    assert!(
        lively.iter().all(|v| v["type"] != "presence"),
        "a client answering pings was dropped: {lively:?}"
    );

    signal_pid(child.0.id(), "STOP");
    let frozen_at = Instant::now();
    let (offline, skipped) = watcher.wait_for(IDLE + GRACE + Duration::from_secs(5), |v| {
        v["type"] == "presence"
    });
    let took = frozen_at.elapsed();
    assert_eq!(offline["user"], "frozen", "skipped {skipped:?}");
    assert_eq!(offline["state"], "offline");
    assert!(
        took >= GRACE,
        "offline after {took:?}, before the grace period could pass"
    );
    assert!(
        took <= IDLE + CLOSE_LINGER + GRACE + Duration::from_secs(1),
        "a frozen peer took {took:?} to be shown offline (idle timeout {IDLE:?} + close linger {CLOSE_LINGER:?} + grace {GRACE:?})"
    );
    // The server no longer holds the frozen connection: only the watcher's is open.
    poll_until(T, "the frozen connection to be closed", || {
        s.metrics()
            .lines()
            .any(|l| l.trim() == "chatd_connections 1")
            .then_some(())
    });
    assert_eq!(watcher.who("r"), names(&["watcher"]));
    signal_pid(child.0.id(), "CONT");
}
