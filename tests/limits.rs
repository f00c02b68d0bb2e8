//! Connection limits: per address (unauthenticated and total), per account, and the count and
//! log line of every refusal. Loopback has many addresses on Linux: sockets bound to 127.0.0.2,
//! 127.0.0.3, … are "different IPs" to the server.

mod common;

use common::*;
use serde_json::json;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;

/// A TCP connection to `addr` from `source` (any port).
fn tcp_from(source: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let source: IpAddr = source.parse().expect("source address");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), T)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(T))?;
    stream.set_write_timeout(Some(T))?;
    Ok(stream)
}

/// A WebSocket client connected from `source`, not yet authenticated.
fn client_from(source: &str, addr: SocketAddr) -> Client {
    let stream = tcp_from(source, addr).unwrap_or_else(|e| panic!("connect from {source}: {e}"));
    stream.set_nodelay(true).unwrap();
    match tungstenite::client(format!("ws://{addr}/ws"), stream) {
        Ok((ws, _)) => Client::from_ws(ws, addr),
        Err(e) => panic!("WebSocket handshake from {source} refused: {e}"),
    }
}

/// The first line of the answer to `GET path` sent from `source`.
fn status_from(source: &str, addr: SocketAddr, path: &str) -> String {
    let mut stream = tcp_from(source, addr).expect("connect");
    let _ = stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

/// `chatd_connections_refused_total{reason="REASON"}`.
fn refused(server: &TestServer, reason: &str) -> u64 {
    server.metric(&format!(
        "chatd_connections_refused_total{{reason=\"{reason}\"}}"
    )) as u64
}

#[test]
fn an_address_cycling_unauthenticated_sockets_cannot_keep_logins_out() {
    let server = TestServer::start(&[
        "--max-connections",
        "40",
        "--max-unauthenticated-per-ip",
        "8",
    ]);
    let addr = server.addr();
    let (stop, stopped) = mpsc::channel::<()>();
    let attacker = thread::spawn(move || {
        // Opens sockets as fast as it can and never sends a byte; keeps the newest 60. It stops
        // cycling after 5,000 (so a slow run cannot exhaust the ephemeral ports) but holds what
        // it has until the test is done.
        let mut held = VecDeque::new();
        let mut opened = 0u32;
        while stopped.try_recv().is_err() && opened < 5_000 {
            if let Ok(socket) = tcp_from("127.0.0.2", addr) {
                held.push_back(socket);
                opened += 1;
            }
            if held.len() > 60 {
                held.pop_front();
            }
        }
        let _ = stopped.recv_timeout(std::time::Duration::from_secs(60));
        opened
    });
    poll_until(T, "the attacker to reach its address's limit", || {
        (refused(&server, "ip_unauthenticated_full") > 0).then_some(())
    });
    for i in 0..10 {
        let mut c = client_from("127.0.0.3", addr);
        let welcome = c.auth_ok(
            json!({"type":"auth","user":format!("legit{i}"),"password":PASSWORD,"register":true}),
        );
        assert_eq!(welcome["type"], "welcome");
    }
    let _ = stop.send(());
    let opened = attacker.join().expect("attacker thread");
    assert!(opened > 60, "the attacker cycled sockets ({opened} opened)");
    assert!(
        server.stderr().contains("connection refused by a limit"),
        "refusals are logged"
    );
}

#[test]
fn an_account_holding_its_limit_cannot_take_more_and_others_still_get_in() {
    let server = TestServer::start(&["--max-connections-per-account", "3"]);
    let first = server.register("alice");
    let second = server.resume(&first.token);
    let _third = server.resume(&first.token);

    let mut fourth = server.connect();
    fourth.send_json(&json!({"type":"auth","token":first.token}));
    let error = fourth.expect_error("rate_limited");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("3 connections"),
        "the refusal says why: {error}"
    );
    fourth.expect_close_code(1013, T);
    let mut by_password = server.connect();
    by_password.send_json(&json!({"type":"auth","user":"Alice","password":PASSWORD}));
    by_password.expect_error("rate_limited");
    by_password.expect_close_code(1013, T);
    assert_eq!(refused(&server, "account_full"), 2);

    server.register("bob");
    first.close();
    poll_until(T, "alice's freed connection to be usable", || {
        let mut c = server.connect();
        c.send_json(&json!({"type":"auth","token":second.token}));
        (c.recv_json(T)["type"] == "welcome").then_some(())
    });
}

#[test]
fn an_address_over_its_total_gets_503_counted_and_others_are_served() {
    let server = TestServer::start(&["--max-connections-per-ip", "2"]);
    let addr = server.addr();
    let _a = client_from("127.0.0.4", addr);
    let _b = client_from("127.0.0.4", addr);
    assert_eq!(
        status_from("127.0.0.4", addr, "/healthz"),
        "HTTP/1.1 503 Service Unavailable"
    );
    assert_eq!(
        status_from("127.0.0.5", addr, "/healthz"),
        "HTTP/1.1 200 OK"
    );
    assert_eq!(refused(&server, "ip_full"), 1);
    assert!(
        server.stderr().contains("reason=\"ip_full\""),
        "{}",
        server.stderr()
    );
}
