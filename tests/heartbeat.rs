//! PROTOCOL.md "Heartbeats": server WebSocket pings, idle timeout close 4000, app-level ping.
mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn server_sends_websocket_pings_at_the_interval() {
    let s = TestServer::start(&["--ping-interval", "200ms", "--idle-timeout", "10s"]);
    let mut raw = s.raw();
    raw.auth_register("alice");
    let t0 = Instant::now();
    let mut pings = Vec::new();
    while t0.elapsed() < ms(1500) {
        match raw.read_frame(ms(1500).saturating_sub(t0.elapsed())) {
            RawEvent::Frame {
                opcode: OP_PING, ..
            } => {
                pings.push(t0.elapsed());
                // Answer like a browser would, so only the ping timing is under test.
                raw.send_frame(true, OP_PONG, b"").unwrap();
            }
            RawEvent::Timeout => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        pings.len() >= 4,
        "expected a ping about every 200 ms for 1.5 s, got {} at {pings:?}",
        pings.len()
    );
    assert!(
        pings.len() <= 12,
        "far too many pings for a 200 ms interval: {pings:?}"
    );
    assert!(pings[0] < ms(700), "first ping late: {pings:?}");
}

#[test]
fn tungstenite_client_sees_pings_and_stays_connected_past_several_idle_timeouts() {
    let s = TestServer::start(&["--ping-interval", "150ms", "--idle-timeout", "600ms"]);
    let mut c = s.register("alice");
    c.join("r");
    // The client only reads (tungstenite answers pings with pongs); it sends no app frame for
    // four idle timeouts. Proving "stays open" needs waiting that long.
    let frames = c.collect_for(ms(2400));
    assert!(frames.is_empty(), "{frames:?}");
    assert!(c.pings >= 5, "expected server pings, saw {}", c.pings);
    c.send_json(&json!({"type":"ping","t":"alive"}));
    assert_eq!(c.expect("pong")["t"], "alive");
}

#[test]
fn silent_client_is_closed_with_4000_after_the_idle_timeout() {
    let s = TestServer::start(&["--ping-interval", "200ms", "--idle-timeout", "1s"]);
    let mut raw = s.raw();
    // The auth frame is the last thing this client ever sends (no frames, no pongs after it);
    // the idle clock starts when the server receives it, which is after this instant.
    let last_sent = Instant::now();
    raw.auth_register("alice");
    let mut pings = 0;
    let deadline = Duration::from_secs(6);
    let end = loop {
        match raw.read_frame(deadline.saturating_sub(last_sent.elapsed())) {
            RawEvent::Frame {
                opcode: OP_PING, ..
            } => pings += 1,
            RawEvent::Frame {
                opcode: OP_CLOSE,
                payload,
                ..
            } => {
                break Some(if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    0
                })
            }
            RawEvent::Frame {
                opcode, payload, ..
            } => {
                panic!(
                    "unexpected frame opcode {opcode}: {:?}",
                    String::from_utf8_lossy(&payload)
                )
            }
            RawEvent::Timeout => {
                panic!("silent client still open after {deadline:?} with a 1 s idle timeout")
            }
            RawEvent::Eof | RawEvent::Error(_) => break None,
        }
    };
    let elapsed = last_sent.elapsed();
    assert!(
        elapsed >= ms(900),
        "closed after {elapsed:?}, before the 1 s idle timeout"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "closed only after {elapsed:?}"
    );
    assert!(pings >= 2, "pings were sent before giving up ({pings})");
    assert_eq!(
        end,
        Some(4000),
        "idle connections are closed with a 4000 close frame"
    );
}

#[test]
fn app_frames_count_as_activity_even_without_pongs() {
    // "nothing at all (no frame, no Pong) arrived": a client that never answers WebSocket
    // pings but keeps sending app frames is not idle.
    let s = TestServer::start(&["--ping-interval", "200ms", "--idle-timeout", "800ms"]);
    let mut raw = s.raw();
    raw.auth_register("alice");
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < ms(2500) {
        raw.send_json(&json!({"type":"ping","t":n}));
        let v = raw.read_json(T);
        assert_eq!(v, json!({"type":"pong","t":n}));
        n += 1;
        // Pace the app pings at 300 ms: there is nothing to poll for, the spacing is the point.
        let until = t0 + ms(300 * n);
        while Instant::now() < until {
            match raw.read_frame(until.saturating_duration_since(Instant::now())) {
                RawEvent::Frame {
                    opcode: OP_PING, ..
                }
                | RawEvent::Timeout => {}
                other => panic!("connection with app traffic was closed: {other:?}"),
            }
        }
    }
    assert!(n >= 8);
}

#[test]
fn app_ping_echoes_any_json_t() {
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    for t in [
        json!(123),
        json!(0),
        json!(-5),
        json!(1.5),
        json!(9007199254740991u64),
        json!("abc"),
        json!(""),
        json!(true),
        json!([1, "two", {"three": 3}]),
        json!({"nested": {"a": [null, false, 2.25]}, "s": "x"}),
    ] {
        c.send_json(&json!({"type":"ping","t":t}));
        let p = c.expect("pong");
        assert_eq!(p["t"], t, "pong echoes t: {p}");
    }
}

#[test]
fn app_ping_works_before_joining_any_room_and_is_not_rate_limited() {
    let s = TestServer::start(&["--rate", "1", "--burst", "2"]);
    let mut c = s.register("alice");
    for i in 0..25 {
        c.send_json(&json!({"type":"ping","t":i}));
    }
    for i in 0..25 {
        let p = c.recv_json(T);
        assert_eq!(
            p,
            json!({"type":"pong","t":i}),
            "pings are answered in order and are not send frames"
        );
    }
}

#[test]
fn unauthenticated_connection_obeys_auth_timeout_not_idle_timeout() {
    // A connection that never authenticates is closed at the auth deadline with 1008.
    let s = TestServer::start(&["--auth-timeout", "500ms", "--idle-timeout", "30s"]);
    let mut raw = s.raw();
    let (_, end) = raw.read_until_close(Duration::from_secs(5));
    assert_eq!(end, Ok(Some(1008)));
}
