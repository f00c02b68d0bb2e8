//! CLI contract + PROTOCOL.md close code 1001: SIGTERM/SIGINT close every WebSocket with 1001
//! and the process exits 0 within 5 s.
mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn sigterm_closes_every_websocket_with_1001_and_exits_0() {
    let mut s = TestServer::start(&[]);
    let mut in_room = s.register("alice");
    in_room.join("r");
    let mut authed = s.register("bob");
    // A raw client that reads nothing at all must not hold up the shutdown.
    let mut raw = s.raw();
    raw.auth_register("carol");

    let t0 = Instant::now();
    s.sigterm();
    for (name, c) in [("joined", &mut in_room), ("authed", &mut authed)] {
        let (frames, end) = c.read_until_end(Duration::from_secs(5));
        let unexpected: Vec<_> = frames.iter().filter(|f| f["type"] != "presence").collect();
        assert!(unexpected.is_empty(), "{name}: {unexpected:?}");
        assert_eq!(
            end,
            Event::Closed(Some(1001)),
            "{name} client: close code on shutdown"
        );
    }
    let st = s.wait_exit(Duration::from_secs(5).saturating_sub(t0.elapsed()) + ms(200));
    assert!(st.success(), "exit status after SIGTERM: {st:?}");
    assert!(
        t0.elapsed() <= Duration::from_millis(5200),
        "exited after {:?}",
        t0.elapsed()
    );
    let (_, end) = raw.read_until_close(Duration::from_secs(2));
    match end {
        Ok(code) => assert_eq!(code, Some(1001), "non-reading client's close frame"),
        Err(e) => assert!(matches!(e, RawEvent::Eof | RawEvent::Error(_)), "{e:?}"),
    }
}

#[test]
fn sigterm_closes_unauthenticated_websockets_with_1001_too() {
    // "close every WebSocket with code 1001": a connection that has not sent auth yet is a
    // WebSocket too.
    let mut s = TestServer::start(&[]);
    let mut unauthed = s.connect();
    let mut authed = s.register("alice");
    let t0 = Instant::now();
    s.sigterm();
    let end = unauthed.recv(Duration::from_secs(5));
    let at = t0.elapsed();
    assert_eq!(authed.expect_close(Duration::from_secs(5)), Some(1001));
    assert_eq!(
        end,
        Event::Closed(Some(1001)),
        "unauthenticated client on shutdown (after {at:?})"
    );
    let st = s.wait_exit(Duration::from_secs(5).saturating_sub(t0.elapsed()) + ms(200));
    assert!(st.success(), "{st:?}");
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let mut s = TestServer::start(&[]);
    let mut c = s.register("alice");
    let t0 = Instant::now();
    s.sigint();
    assert_eq!(c.expect_close(Duration::from_secs(5)), Some(1001));
    let st = s.wait_exit(Duration::from_secs(5).saturating_sub(t0.elapsed()) + ms(200));
    assert!(st.success(), "{st:?}");
}

#[test]
fn idle_server_exits_promptly_and_stops_accepting() {
    let mut s = TestServer::start(&[]);
    let addr = s.addr();
    let t0 = Instant::now();
    s.sigterm();
    let st = s.wait_exit(Duration::from_secs(5));
    assert!(st.success(), "{st:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        std::net::TcpStream::connect_timeout(&addr, ms(500)).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn data_written_before_sigterm_is_there_after_restart() {
    let mut s = TestServer::start(&[]);
    let mut a = s.register("alice");
    a.join("r");
    let (ack, _) = a.say("r", "before shutdown");
    s.sigterm();
    assert_eq!(a.expect_close(Duration::from_secs(5)), Some(1001));
    assert!(s.wait_exit(Duration::from_secs(5)).success());
    s.restart();
    let mut b = s.login("alice", PASSWORD);
    let j = b.join("r");
    assert_eq!(j.ids(), vec![id_of(&ack)]);
}
