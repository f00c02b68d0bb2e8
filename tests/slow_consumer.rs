//! PROTOCOL.md close code 4008: a client that does not read and overflows its send queue is
//! closed with 4008; a client that reads keeps receiving every message.
mod common;
use common::*;
use serde_json::{json, Value};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Sum of /metrics samples whose name or labels mention a slow-consumer close ("slow" or
/// "4008"). Black-box: the metric's exact name is not part of the contract.
fn slow_close_metric(s: &TestServer) -> f64 {
    s.metrics()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l
                .rsplit_once(' ')
                .map(|(n, _)| n)
                .unwrap_or("")
                .to_ascii_lowercase();
            name.contains("slow") || name.contains("4008")
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn non_reading_client_is_closed_with_4008_and_a_reader_gets_everything() {
    let s = TestServer::start(&[
        "--send-queue",
        "256",
        "--rate",
        "1000000",
        "--burst",
        "1000000",
    ]);
    let addr = s.addr();
    let room = "firehose";

    // The slow one: joins, then reads nothing until the server has decided to close it.
    let mut slow = s.register("slow");
    slow.join(room);

    // A normal reader in its own thread; it stops at the END marker.
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut c = Client::register(addr, "reader", PASSWORD);
        c.join(room);
        ready_tx.send(()).unwrap();
        let mut ids = Vec::new();
        loop {
            let v = match c.recv(Duration::from_secs(30)) {
                Event::Json(v) => v,
                other => panic!("reader: {other:?} after {} messages", ids.len()),
            };
            if v["type"] == "message" {
                ids.push(id_of(&v));
                if v["text"] == "END" {
                    return ids;
                }
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("reader joined");

    let mut sender = s.register("sender");
    sender.join(room);
    let base = s.healthz()["connections"].as_u64().unwrap();
    let metric_base = slow_close_metric(&s);

    // Draining the slow client: started as soon as the server reports the slow close (so the
    // close frame can still be read behind the buffered data), or after the last batch.
    let drain = |mut c: Client| {
        thread::spawn(move || {
            let (frames, end) = c.read_until_end(Duration::from_secs(30));
            (frames, end)
        })
    };
    let mut slow = Some(slow);
    let mut slow_drain = None;

    // 16 000-byte texts (4000 four-byte scalar values).
    let big: String = "\u{1F4A9}".repeat(3990);
    let mut acked = Vec::new();
    let mut detected_after = None;
    let t0 = Instant::now();
    const BATCH: usize = 50;
    while acked.len() < 3000 {
        for k in 0..BATCH {
            sender.send_json(&json!({"type":"send","room":room,"text":format!("{k:04}{big}")}));
        }
        acked.extend(sender.acks_and_echoes(BATCH));
        if detected_after.is_none() && slow_close_metric(&s) > metric_base {
            detected_after = Some(acked.len());
            slow_drain = Some(drain(slow.take().unwrap()));
        }
        // A few more batches after the slow close, to show the others are unaffected.
        if let Some(n) = detected_after {
            if acked.len() >= n + 4 * BATCH {
                break;
            }
        }
    }
    let (end_ack, _) = sender.say(room, "END");
    acked.push(id_of(&end_ack));
    eprintln!(
        "sent {} messages in {:?}; slow close seen in /metrics after {:?}",
        acked.len(),
        t0.elapsed(),
        detected_after
    );

    let reader_ids = reader.join().expect("reader thread panicked");
    assert_eq!(
        reader_ids, acked,
        "the reading client receives every message, in order"
    );

    // What the slow client got: a gap-free prefix of the messages in order, then 4008.
    let slow_drain = slow_drain.unwrap_or_else(|| drain(slow.take().unwrap()));
    let (frames, end) = slow_drain.join().expect("drain thread panicked");
    let ids: Vec<u64> = frames
        .iter()
        .filter(|v| v["type"] == "message")
        .map(id_of)
        .collect();
    let others: Vec<&Value> = frames
        .iter()
        .filter(|v| v["type"] != "message" && v["type"] != "presence")
        .collect();
    assert!(
        others.is_empty(),
        "slow client got unexpected frames: {others:?}"
    );
    assert!(
        ids.len() < acked.len(),
        "the slow client cannot have received everything"
    );
    assert_eq!(
        ids,
        acked[..ids.len()].to_vec(),
        "before the close, the slow client gets a gap-free prefix in order"
    );
    match end {
        Event::Closed(code) => assert_eq!(code, Some(4008), "slow consumer close code"),
        Event::Ended(e) => {
            // The server may give up on a socket nobody reads before the close frame gets
            // through; then /metrics must show the slow-consumer close.
            assert!(
                slow_close_metric(&s) > metric_base,
                "slow client's connection ended without a 4008 close frame ({e}) and /metrics shows no slow-consumer close"
            );
            eprintln!("note: no 4008 close frame could be read ({e}); /metrics shows the slow-consumer close");
        }
        Event::Timeout => panic!(
            "the slow client was never closed ({} messages buffered)",
            ids.len()
        ),
        Event::Json(_) => unreachable!(),
    }
    assert!(
        detected_after.is_some(),
        "/metrics never showed a slow-consumer close"
    );
    poll_until(
        Duration::from_secs(10),
        "healthz.connections to drop the slow client",
        || (s.healthz()["connections"].as_u64().unwrap() < base).then_some(()),
    );
}

#[test]
fn a_client_behind_by_less_than_the_send_queue_is_not_dropped() {
    // Default --send-queue is 1024 frames. A member that reads nothing while 700 large
    // messages go by is behind by at most 700 frames (fewer, since the kernel buffers some):
    // it must keep its connection and then receive all of them.
    let s = TestServer::start(&["--rate", "1000000", "--burst", "1000000"]);
    let room = "backlog";
    let mut lagging = s.register("lagging");
    lagging.join(room);
    let mut sender = s.register("sender");
    sender.join(room);
    lagging.expect("presence");
    let big: String = "\u{1F4A9}".repeat(3990);
    let mut acked = Vec::new();
    while acked.len() < 700 {
        for k in 0..50 {
            sender.send_json(&json!({"type":"send","room":room,"text":format!("{k:04}{big}")}));
        }
        let mut echoes = 0;
        let mut acks = 0;
        while acks < 50 || echoes < 50 {
            let v = sender.recv_json(Duration::from_secs(20));
            match v["type"].as_str() {
                Some("ack") => {
                    acked.push(id_of(&v));
                    acks += 1;
                }
                Some("message") => echoes += 1,
                _ => panic!("sender: unexpected {v}"),
            }
        }
    }
    let mut got = Vec::new();
    while got.len() < acked.len() {
        match lagging.recv(Duration::from_secs(20)) {
            Event::Json(v) if v["type"] == "message" => got.push(id_of(&v)),
            other => panic!(
                "lagging client after {} of {} messages: {other:?}",
                got.len(),
                acked.len()
            ),
        }
    }
    assert_eq!(got, acked);
    lagging.barrier();
}

/// A server for the stalled-client tests, and a raw client in `room` that reads nothing more
/// from the moment this returns until the server has closed it as a slow consumer.
fn stalled_until_4008(args: &[&str]) -> (TestServer, RawWs) {
    let s = TestServer::start(args);
    let room = "stall";
    let mut slow = s.raw();
    slow.auth_register("staller");
    slow.send_json(&json!({"type":"join","room":room}));
    let (joined, synced) = (slow.read_json(T), slow.read_json(T));
    assert_eq!(
        (joined["type"].as_str(), synced["type"].as_str()),
        (Some("joined"), Some("synced"))
    );
    let mut sender = s.register("sender");
    sender.join(room);
    let metric_base = slow_close_metric(&s);
    let big: String = "\u{1F4A9}".repeat(3990);
    let started = Instant::now();
    while slow_close_metric(&s) <= metric_base {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the stalled client was never closed as a slow consumer"
        );
        for k in 0..50 {
            sender.send_json(&json!({"type":"send","room":room,"text":format!("{k:04}{big}")}));
        }
        sender.acks_and_echoes(50);
    }
    (s, slow)
}

const STALL_ARGS: [&str; 10] = [
    "--send-queue",
    "256",
    "--rate",
    "1000000",
    "--burst",
    "1000000",
    "--idle-timeout",
    "20s",
    "--ping-interval",
    "10s",
];

/// A client that stalls long enough to be closed with 4008 and only then reads again still
/// gets the Close frame: the server keeps the socket, with nothing but the Close pending,
/// until the idle timeout. It used to drop the socket 2 s after queueing the Close.
#[test]
fn the_4008_close_reaches_a_client_that_reads_again_after_the_linger() {
    let (_s, mut slow) = stalled_until_4008(&STALL_ARGS);
    // The scenario itself, not a synchronisation: the client stays stalled for longer than the
    // server's 2 s close linger before it reads again.
    thread::sleep(Duration::from_secs(3));
    let (frames, end) = slow.read_until_close(Duration::from_secs(30));
    assert_eq!(
        end,
        Ok(Some(4008)),
        "after {} buffered frames the client reads the 4008 Close",
        frames.len()
    );
}

/// A 4008 Close still waiting for a stalled client does not hold up a graceful shutdown.
#[test]
fn a_lingering_4008_close_does_not_delay_shutdown() {
    let (mut s, _slow) = stalled_until_4008(&STALL_ARGS);
    let asked = Instant::now();
    s.sigterm();
    let status = s.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        !s.stderr()
            .contains("still open after the shutdown grace period"),
        "shutdown waited for the stalled client ({:?}): {}",
        asked.elapsed(),
        s.stderr_tail(20)
    );
}
