//! Vulnerability 1 of issue 8: a full disk must not wedge the server. Runs against the real
//! binary with its data directory on a small tmpfs this test mounts (root only; elsewhere it says
//! why it is skipped and passes).
mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A tmpfs of a fixed size mounted on a fresh directory, unmounted when dropped (also when the
/// test panics).
struct Tmpfs {
    mountpoint: TempDir,
}

impl Tmpfs {
    /// Mounts one, or says why it cannot and returns None.
    fn mount(size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a tmpfs needs root; the full-disk test did not run");
            return None;
        }
        let mountpoint = TempDir::new().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mountpoint.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { mountpoint }),
            other => {
                eprintln!(
                    "SKIPPED: `mount -t tmpfs` failed ({other:?}); the full-disk test did not run"
                );
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.mountpoint.path()
    }

    /// A data directory inside the tmpfs, for [`TestServer::start_in`].
    fn data_dir(&self) -> TempDir {
        TempDir::new_in(self.path()).expect("tempdir on the tmpfs")
    }

    /// Writes a file of `bytes` that the test deletes later to give space back.
    fn filler(&self, bytes: usize) -> PathBuf {
        let path = self.path().join("filler");
        std::fs::write(&path, vec![0x5au8; bytes]).expect("writing the filler file");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server killed a moment ago may still hold files open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mountpoint.path())
            .status();
    }
}

/// What became of each send.
#[derive(Default, Debug)]
struct Outcomes {
    /// cid → id of every acked send.
    acked: BTreeMap<String, u64>,
    /// cid → error message of every refused send.
    refused: BTreeMap<String, String>,
}

/// Sends `count` messages of `text` with cids `{prefix}{n}`, `window` at a time, until one is
/// refused (then it finishes the window). Every reply must come within `reply_within`.
fn send_until_refused(
    c: &mut Client,
    room: &str,
    prefix: &str,
    text: &str,
    count: usize,
    reply_within: Duration,
) -> Outcomes {
    send_many(c, room, prefix, text, count, reply_within, true)
}

/// Like [`send_until_refused`], but `stop_at_refusal` false sends all `count`.
fn send_many(
    c: &mut Client,
    room: &str,
    prefix: &str,
    text: &str,
    count: usize,
    reply_within: Duration,
    stop_at_refusal: bool,
) -> Outcomes {
    let mut out = Outcomes::default();
    let window = 8;
    let mut n = 0;
    while n < count && (out.refused.is_empty() || !stop_at_refusal) {
        let batch: Vec<String> = (n..(n + window).min(count))
            .map(|i| format!("{prefix}{i}"))
            .collect();
        n += batch.len();
        for cid in &batch {
            c.send_json(&json!({"type":"send","room":room,"text":text,"cid":cid}));
        }
        let mut pending = batch.len();
        while pending > 0 {
            let v = c.recv_json(reply_within);
            match v["type"].as_str() {
                Some("ack") => {
                    out.acked
                        .insert(v["cid"].as_str().unwrap().to_string(), id_of(&v));
                    pending -= 1;
                }
                Some("error") => {
                    assert_eq!(v["code"], "internal", "a refused send: {v}");
                    let cid = v["ref"].as_str().expect("error ref").to_string();
                    out.refused
                        .insert(cid, v["message"].as_str().unwrap_or("").to_string());
                    pending -= 1;
                }
                Some("message") | Some("presence") => {}
                _ => panic!("unexpected frame while sending: {v}"),
            }
        }
    }
    out
}

/// Every message of `room`, by cid, paged through `history` from the start.
fn stored_by_cid(c: &mut Client, room: &str) -> BTreeMap<String, u64> {
    c.join(room);
    let mut stored = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = c.history(json!({"type":"history","room":room,"after":after,"limit":200}));
        let messages = page["messages"]
            .as_array()
            .expect("history messages")
            .clone();
        for m in &messages {
            let cid = m["cid"]
                .as_str()
                .expect("every test message has a cid")
                .to_string();
            assert!(
                stored.insert(cid.clone(), id_of(m)).is_none(),
                "cid {cid} stored twice"
            );
        }
        match messages.last() {
            Some(m) if page["more"] == true => after = id_of(m),
            _ => return stored,
        }
    }
}

/// Sends each cid again (same text) and returns cid → acked id. Every resend must be acked.
fn resend(c: &mut Client, room: &str, text: &str, cids: &[String]) -> BTreeMap<String, u64> {
    let mut acked = BTreeMap::new();
    for cid in cids {
        c.send_json(&json!({"type":"send","room":room,"text":text,"cid":cid}));
        let (ack, _) = c.wait_for(T, |v| v["type"] == "ack" || v["type"] == "error");
        assert_eq!(ack["type"], "ack", "resending {cid}: {ack}");
        acked.insert(cid.clone(), id_of(&ack));
    }
    acked
}

/// `/healthz` as (status, body), whatever the status.
fn health(s: &TestServer) -> (u16, Value) {
    let r = s.get("/healthz");
    (r.status, r.json())
}

/// Polls `/healthz` until its `storage` field is one of `states`.
fn wait_for_storage(s: &TestServer, states: &[&str]) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = health(s);
        if states.iter().any(|st| body["storage"] == *st) {
            return (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never showed {states:?}: {body}"
        );
        std::thread::sleep(ms(20));
    }
}

/// The server keeps answering what needs no disk write: an application ping, history, and a
/// second connection that logs in.
fn still_serving(s: &TestServer, bob: &mut Client, room: &str) {
    bob.send_json(&json!({"type":"ping","t":"still-there"}));
    let (pong, _) = bob.wait_for(T, |v| v["type"] == "pong");
    assert_eq!(pong["t"], "still-there");
    let page = bob.history(json!({"type":"history","room":room,"limit":5}));
    assert_eq!(page["type"], "history", "{page}");
    assert!(!page["messages"].as_array().unwrap().is_empty());
    let mut carol = s.login("bob", PASSWORD);
    carol.join(room);
}

/// What still works after sled failed a write (it then fails some reads too): the server
/// answers an application ping, and answers history and a login, if only with an error.
fn still_answering(s: &TestServer, bob: &mut Client, room: &str) {
    bob.send_json(&json!({"type":"ping","t":"still-there"}));
    let (pong, _) = bob.wait_for(T, |v| v["type"] == "pong");
    assert_eq!(pong["t"], "still-there");
    bob.send_json(&json!({"type":"history","room":room,"limit":5}));
    let (page, _) = bob.wait_for(T, |v| v["type"] == "history" || v["type"] == "error");
    assert!(
        page["type"] == "history" || page["code"] == "internal",
        "{page}"
    );
    let mut carol = s.connect();
    let reply = carol.auth(json!({"type":"auth","user":"bob","password":PASSWORD}));
    assert!(
        reply["type"] == "welcome" || reply["type"] == "error",
        "{reply}"
    );
}

const TEXT: &str = "the quick brown fox jumps over the lazy dog; ";

/// No headroom, so sled itself runs into ENOSPC; sends as fast as the test makes them. The disk
/// fills after about 1,100 of `long_text`'s sends, so the per-connection bucket must hold more
/// than that: at 1,000 it ran dry first in some runs.
const NO_HEADROOM: [&str; 8] = [
    "--min-free-space",
    "0",
    "--flush-timeout",
    "2s",
    "--rate",
    "100000",
    "--burst",
    "100000",
];

/// How many refused sends the low-space test sends again once space is back: 64 of
/// `long_text` are about 200 KiB, well inside the space the test frees.
const RESENT_AFTER_RECOVERY: usize = 64;

fn long_text() -> String {
    TEXT.repeat(3000 / TEXT.len())
}

#[test]
fn low_space_refuses_sends_keeps_serving_and_recovers_without_a_restart() {
    let Some(fs) = Tmpfs::mount("8m") else { return };
    let filler = fs.filler(3 << 20);
    // The rounds below go on until the free-space reading catches up, which can take longer
    // than a burst of 1000 sends lasts, and once (a CI run) took more than the account's daily
    // 100 MiB: neither the rate limit nor the quota may be what refuses a send.
    let args = [
        "--min-free-space",
        "2MiB",
        "--rate",
        "1000000",
        "--burst",
        "1000000",
        "--account-quota-mb",
        "0",
    ];
    let mut s = TestServer::start_in(fs.data_dir(), &args);
    let mut alice = s.register("alice");
    alice.join("r");
    let mut bob = s.register("bob");
    bob.join("r");
    let text = long_text();

    // The byte budget may refuse a burst a moment before a free-space reading shows the
    // threshold crossed: keep sending until /healthz reports low space.
    let mut out = Outcomes::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0.. {
        let more = send_until_refused(&mut alice, "r", &format!("a{round}-"), &text, 5_000, T);
        out.acked.extend(more.acked);
        out.refused.extend(more.refused);
        if health(&s).1["storage"] == "low_space" {
            break;
        }
        assert!(Instant::now() < deadline, "never ran low on space: {out:?}");
    }
    assert!(!out.acked.is_empty(), "some sends fit before the headroom");
    assert!(
        !out.refused.is_empty(),
        "sends are refused before the disk is full"
    );
    for (cid, message) in &out.refused {
        assert!(message.contains("low on disk space"), "{cid}: {message}");
    }
    let (status, body) = wait_for_storage(&s, &["low_space"]);
    assert_eq!((status, &body["ok"]), (503, &json!(false)), "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("--min-free-space"),
        "{body}"
    );
    still_serving(&s, &mut bob, "r");
    // A repeat of a stored cid stores nothing, so low space does not refuse it.
    let (first_cid, first_id) = out.acked.iter().next().unwrap();
    let repeat = resend(&mut alice, "r", &text, std::slice::from_ref(first_cid));
    assert_eq!(repeat[first_cid], *first_id);
    // Refusals are counted, and logged once per change of state, not per request.
    let refused_more = send_many(&mut alice, "r", "z", "small", 40, T, false);
    assert_eq!(refused_more.refused.len(), 40, "{refused_more:?}");
    let metrics = s.metrics();
    assert!(metric_sample(&metrics, "chatd_writes_refused_total{reason=\"low_space\"}") >= 40.0);
    assert!(metric_sample(&metrics, "chatd_storage_state_changes_total") >= 1.0);
    assert_eq!(
        s.stderr().matches("database writes are refused").count(),
        1,
        "{}",
        s.stderr()
    );
    assert!(!s.stderr().contains("request failed"), "{}", s.stderr());

    std::fs::remove_file(&filler).expect("removing the filler");
    let freed = Instant::now();
    let (status, body) = wait_for_storage(&s, &["ok"]);
    assert_eq!((status, &body["ok"]), (200, &json!(true)), "{body}");
    eprintln!(
        "figures: {} acked before low space, {} refused; writable again {:?} after freeing space",
        out.acked.len(),
        out.refused.len(),
        freed.elapsed()
    );
    // Resend a bounded sample: the refusals pile up for as long as the free-space reading lags
    // (827 in one CI run), and resending them all (2.4 MiB) fills the 3 MiB just freed and runs
    // low on space again. Those not resent must stay unstored.
    let refused: Vec<String> = out
        .refused
        .keys()
        .take(RESENT_AFTER_RECOVERY)
        .cloned()
        .collect();
    let resent = resend(&mut alice, "r", &text, &refused);

    let t0 = Instant::now();
    s.sigterm();
    let st = s.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    eprintln!("figures: SIGTERM to exit {:?}", t0.elapsed());
    s.restart();
    let mut dave = s.register("dave");
    let stored = stored_by_cid(&mut dave, "r");
    let mut expected = out.acked.clone();
    expected.extend(resent);
    assert_eq!(
        stored, expected,
        "stored after the restart = exactly the acked sends"
    );
}

#[test]
fn a_failed_disk_write_is_reported_refused_fast_and_a_resend_finds_what_was_stored() {
    let Some(fs) = Tmpfs::mount("8m") else { return };
    let filler = fs.filler(1 << 20);
    let mut s = TestServer::start_in(fs.data_dir(), &NO_HEADROOM);
    let mut alice = s.register("alice");
    alice.join("r");
    let mut bob = s.register("bob");
    bob.join("r");
    let text = long_text();

    let out = send_until_refused(&mut alice, "r", "a", &text, 20_000, T);
    assert!(!out.refused.is_empty(), "the disk filled up");
    let (status, body) = wait_for_storage(&s, &["write_failed", "flush_stalled"]);
    assert_eq!((status, &body["ok"]), (503, &json!(false)), "{body}");
    // Later sends are answered at once, not after a flush that cannot happen.
    let t0 = Instant::now();
    let later = send_many(&mut alice, "r", "z", "small", 40, T, false);
    assert_eq!(later.refused.len(), 40, "{later:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "40 refusals took {:?}",
        t0.elapsed()
    );
    eprintln!(
        "figures: {} acked before the disk filled, {} refused; 40 later sends refused in {:?}; {}",
        out.acked.len(),
        out.refused.len(),
        t0.elapsed(),
        body["reason"]
    );
    for message in later.refused.values() {
        assert!(message.contains("not stored"), "{message}");
    }
    still_answering(&s, &mut bob, "r");
    assert_eq!(
        s.stderr().matches("database writes are refused").count(),
        1,
        "{}",
        s.stderr()
    );
    assert!(!s.stderr().contains("request failed"), "{}", s.stderr());

    // Shutdown completes although the database cannot write.
    let t0 = Instant::now();
    s.sigterm();
    let st = s.wait_exit(Duration::from_secs(10));
    assert!(t0.elapsed() < Duration::from_secs(10));
    eprintln!("figures: SIGTERM to exit {:?} ({st:?})", t0.elapsed());

    std::fs::remove_file(&filler).expect("removing the filler");
    s.restart();
    let mut dave = s.register("dave");
    let stored = stored_by_cid(&mut dave, "r");
    for (cid, id) in &out.acked {
        assert_eq!(
            stored.get(cid),
            Some(id),
            "acked {cid} must be stored under its id"
        );
    }
    // A send answered with an error may have reached the disk only if the error said so.
    for cid in stored.keys().filter(|c| !out.acked.contains_key(*c)) {
        let message = &out.refused[cid];
        assert!(
            message.contains("resend it with the same cid"),
            "{cid} stored after {message}"
        );
    }
    // The documented recovery: resend every refused cid; stored ones get their stored id.
    let refused: Vec<String> = out.refused.keys().cloned().collect();
    eprintln!(
        "figures: after the restart {} of the {} refused sends were stored",
        stored.len() - out.acked.len(),
        refused.len()
    );
    let resent = resend(&mut alice_after_restart(&s), "r", &text, &refused);
    for (cid, id) in &resent {
        if let Some(stored_id) = stored.get(cid) {
            assert_eq!(
                id, stored_id,
                "the resend of a stored {cid} gets the stored id"
            );
        }
    }
    let mut expected = out.acked.clone();
    expected.extend(resent);
    let after = stored_by_cid(&mut s.register("erin"), "r");
    assert_eq!(after, expected, "every send exactly once after the resends");
}

fn alice_after_restart(s: &TestServer) -> Client {
    let mut alice = s.login("alice", PASSWORD);
    alice.join("r");
    alice
}

#[test]
fn after_a_failed_write_the_server_reopens_its_database_by_itself_once_space_returns() {
    let Some(fs) = Tmpfs::mount("8m") else { return };
    let filler = fs.filler(1 << 20);
    let s = TestServer::start_in(fs.data_dir(), &NO_HEADROOM);
    let pid = s.pid();
    let mut alice = s.register("alice");
    alice.join("r");
    let text = long_text();
    let out = send_until_refused(&mut alice, "r", "a", &text, 20_000, T);
    assert!(!out.refused.is_empty(), "the disk filled up");
    wait_for_storage(&s, &["write_failed"]);

    // Space returns; nobody restarts anything.
    std::fs::remove_file(&filler).expect("removing the filler");
    let t0 = Instant::now();
    poll_until(
        Duration::from_secs(30),
        "the server to take writes again",
        || {
            // While it restarts in place, the port is briefly closed.
            std::net::TcpStream::connect_timeout(&s.addr(), ms(200)).ok()?;
            (health(&s).1["storage"] == "ok").then_some(())
        },
    );
    eprintln!(
        "figures: writable again {:?} after the space returned",
        t0.elapsed()
    );
    assert_eq!(s.pid(), pid, "the same process, started again in place");
    assert!(
        s.stderr()
            .contains("restarting in place to reopen the database"),
        "{}",
        s.stderr()
    );

    // Clients resume as after any restart; every send ends up stored exactly once.
    let refused: Vec<String> = out.refused.keys().cloned().collect();
    let resent = resend(&mut alice_after_restart(&s), "r", &text, &refused);
    let mut expected = out.acked.clone();
    expected.extend(resent);
    let after = stored_by_cid(&mut s.register("erin"), "r");
    assert_eq!(after, expected, "every send exactly once after the resends");
}
