//! A connection's own replies are bounded in memory: a join's replay is read from the database
//! as the client takes it, a history page stops at `--reply-buffer` bytes, and a client that
//! does not read its replies is closed with 4008 (issue 8, item 2).
mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("reading /proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A sample from /metrics. Read with a generous timeout: while 40 replays are being encoded a
/// debug build on a loaded machine can take longer than the harness's usual 5 s to answer.
fn metric(s: &TestServer, name: &str) -> f64 {
    let mut stream = TcpStream::connect(s.addr()).expect("connect for /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request /metrics");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read /metrics");
    response
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Fills `room` with `n` messages of `text`, in batches; returns their ids in order.
fn fill(sender: &mut Client, room: &str, n: usize, text: &str) -> Vec<u64> {
    let mut acked = Vec::new();
    while acked.len() < n {
        let batch = (n - acked.len()).min(50);
        for _ in 0..batch {
            sender.send_json(&json!({"type":"send","room":room,"text":text}));
        }
        acked.extend(sender.acks_and_echoes(batch));
    }
    acked
}

/// The attack: 500 messages of 4,000 × U+0000 (24 KB each once escaped), then 40
/// sockets that join with `since: 0` and never read. Each used to hold the whole replay
/// (10.5 MiB); now each holds at most its reply buffer, and all are closed with 4008.
#[test]
fn non_reading_joiners_of_a_big_history_stay_bounded_and_are_closed_4008() {
    let s = TestServer::start(&[
        "--rate",
        "1000000",
        "--burst",
        "1000000",
        "--reply-timeout",
        "1s",
    ]);
    let room = "nul";
    let mut sender = s.register("sender");
    sender.join(room);
    fill(&mut sender, room, 500, &"\u{0}".repeat(4000));

    let mut joiners: Vec<RawWs> = (0..40)
        .map(|i| {
            let mut raw = s.raw();
            raw.auth_register(&format!("joiner{i}"));
            raw
        })
        .collect();
    let before = rss_kib(s.pid());
    let slow_before = metric(&s, "chatd_slow_consumer_closes_total");
    for raw in &mut joiners {
        raw.send_json(&json!({"type":"join","room":room,"since":0}));
    }
    let mut peak = before;
    poll_until(
        Duration::from_secs(60),
        "every non-reading joiner closed as a slow consumer",
        || {
            peak = peak.max(rss_kib(s.pid()));
            (metric(&s, "chatd_slow_consumer_closes_total") - slow_before >= 40.0).then_some(())
        },
    );
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "RSS before the joins {before} KiB, peak {peak} KiB: +{grown_mib} MiB for 40 joiners"
    );
    assert!(
        grown_mib < 64,
        "40 non-reading joiners grew the server by {grown_mib} MiB (it was 420 MiB before the fix)"
    );

    // Each learns why once it reads: what the kernel buffered, in order, then 4008.
    for raw in &mut joiners {
        let (texts, end) = raw.read_until_close(Duration::from_secs(30));
        assert_eq!(
            end,
            Ok(Some(4008)),
            "a non-reading joiner is closed with 4008"
        );
        assert_eq!(
            texts.first().map(|v| v["type"].clone()),
            Some(json!("joined"))
        );
        let ids: Vec<u64> = texts
            .iter()
            .filter(|v| v["type"] == "message")
            .map(id_of)
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "replayed in id order");
    }
    // A reader is still served by the same server.
    let mut reader = s.register("reader");
    let joined = reader.join_since(room, 0);
    assert_eq!(joined.ids().len(), 500);
}

/// With the smallest reply buffer, a replay takes many pages; live messages sent meanwhile
/// still come after `synced`, and replay plus live stream meet exactly.
#[test]
fn a_reading_client_gets_every_replayed_message_in_order_then_the_live_ones() {
    let s = TestServer::start(&[
        "--rate",
        "1000000",
        "--burst",
        "1000000",
        "--reply-buffer",
        "16384",
    ]);
    let room = "paged";
    let mut sender = s.register("sender");
    sender.join(room);
    let mut all = fill(&mut sender, room, 600, &"x".repeat(1000));

    let mut reader = s.register("reader");
    reader.send_json(&json!({"type":"join","room":room,"since":0}));
    // Live traffic while the replay is being paged out.
    all.extend(fill(&mut sender, room, 30, "live"));
    let joined = reader.read_join_reply(room);
    let replayed = joined.ids();
    assert_eq!(replayed, all[..500].to_vec(), "the first 500, in order");
    assert!(joined.more(), "the replay stopped at its limit");
    let last_id = joined.last_id();
    let expected_live: Vec<u64> = all.iter().copied().filter(|&id| id > last_id).collect();
    let mut live = Vec::new();
    while live.len() < expected_live.len() {
        let v = reader.recv_json(Duration::from_secs(20));
        if v["type"] == "message" {
            live.push(id_of(&v));
        }
    }
    assert_eq!(
        live, expected_live,
        "live messages follow the replay exactly"
    );

    // Without `since`: the newest 50, also paged.
    let mut newest = s.register("newest");
    let joined = newest.join(room);
    assert_eq!(joined.ids(), all[all.len() - 50..].to_vec());
    assert!(!joined.more());
}

/// A history page of large messages stops at the reply buffer and says `more`; paging on
/// returns every message once, in order.
#[test]
fn history_pages_stop_at_the_reply_buffer_and_page_on_completely() {
    let s = TestServer::start(&[
        "--rate",
        "1000000",
        "--burst",
        "1000000",
        "--reply-buffer",
        "65536",
    ]);
    let room = "pages";
    let mut c = s.register("pager");
    c.join(room);
    let all = fill(&mut c, room, 40, &"\u{0}".repeat(4000));
    let first = c.history(json!({"type":"history","room":room,"limit":200}));
    let messages = first["messages"].as_array().expect("messages").clone();
    assert!(
        !messages.is_empty() && messages.len() < 40,
        "a page of 24 KB messages stops near 64 KiB: got {}",
        messages.len()
    );
    assert_eq!(first["more"], true);
    let mut seen: Vec<u64> = messages.iter().map(id_of).collect();
    let started = Instant::now();
    let mut more = true;
    while more {
        assert!(started.elapsed() < Duration::from_secs(30), "paging ends");
        let page = c.history(json!({"type":"history","room":room,"before":seen[0],"limit":200}));
        let ids: Vec<u64> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(id_of)
            .collect();
        more = page["more"] == true;
        seen.splice(0..0, ids);
    }
    assert_eq!(seen, all, "every message once, in order");
    let after = c.history(json!({"type":"history","room":room,"after":0,"limit":200}));
    let ids: Vec<Value> = after["messages"].as_array().expect("messages").clone();
    assert_eq!(id_of(&ids[0]), all[0], "`after` pages start at the oldest");
    assert_eq!(after["more"], true);
}
