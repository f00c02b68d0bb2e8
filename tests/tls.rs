//! Built-in TLS (`--tls-cert`, `--tls-key`): the whole protocol over `wss://`, the web client's
//! files over `https://`, a slow TLS reader that gets every frame intact, the certificate
//! reloaded on SIGHUP without dropping anyone, and clear refusals of unusable files.
mod common;
use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tungstenite::{Message, WebSocket};

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for `localhost`, written as PEM files.
struct Certificate {
    der: CertificateDer<'static>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

fn certificate(dir: &Path, name: &str) -> Certificate {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    Certificate {
        der: cert.der().clone(),
        cert_path,
        key_path,
    }
}

fn tls_flags(c: &Certificate) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        c.cert_path.display().to_string(),
        "--tls-key".into(),
        c.key_path.display().to_string(),
    ]
}

fn start(flags: &[String]) -> TestServer {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestServer::start(&flags)
}

/// A TLS connection that trusts only `trusted`; returns the certificate the server presented.
fn tls_connect(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
) -> (Tls, CertificateDer<'static>) {
    tls_connect_trusting(addr, std::slice::from_ref(trusted))
}

fn tls_connect_trusting(
    addr: SocketAddr,
    trusted: &[CertificateDer<'static>],
) -> (Tls, CertificateDer<'static>) {
    let mut roots = RootCertStore::empty();
    for certificate in trusted {
        roots
            .add(certificate.clone())
            .expect("trust the test certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let session =
        ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(T)).unwrap();
    let mut tls = StreamOwned::new(session, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("TLS handshake with chatd");
    }
    let presented = tls.conn.peer_certificates().expect("server certificate")[0].clone();
    (tls, presented)
}

fn wss(addr: SocketAddr, trusted: &CertificateDer<'static>) -> WebSocket<Tls> {
    let (tls, _) = tls_connect(addr, trusted);
    let (ws, response) = tungstenite::client(format!("wss://localhost:{}/ws", addr.port()), tls)
        .expect("WebSocket handshake over TLS");
    assert_eq!(response.status(), 101);
    ws
}

fn send(ws: &mut WebSocket<Tls>, v: Value) {
    ws.send(Message::text(v.to_string()))
        .expect("send over TLS");
}

fn next(ws: &mut WebSocket<Tls>) -> Value {
    loop {
        match ws.read().expect("read over TLS") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn next_of(ws: &mut WebSocket<Tls>, kind: &str) -> Value {
    loop {
        let v = next(ws);
        if v["type"] == kind {
            return v;
        }
    }
}

fn login(addr: SocketAddr, trusted: &CertificateDer<'static>, user: &str) -> WebSocket<Tls> {
    let mut ws = wss(addr, trusted);
    send(
        &mut ws,
        json!({"type":"auth","user":user,"password":PASSWORD,"register":true}),
    );
    assert_eq!(next(&mut ws)["type"], "welcome");
    ws
}

#[test]
fn the_protocol_and_the_web_client_work_over_tls() {
    let dir = TempDir::new().unwrap();
    let cert = certificate(dir.path(), "a");
    let s = start(&tls_flags(&cert));
    let addr = s.addr();

    let mut alice = login(addr, &cert.der, "alice");
    let mut bob = login(addr, &cert.der, "bob");
    send(&mut alice, json!({"type":"join","room":"r"}));
    next_of(&mut alice, "synced");
    send(&mut bob, json!({"type":"join","room":"r"}));
    next_of(&mut bob, "synced");
    // 15.6 KB of UTF-8 at the protocol's 4000-character limit: two TLS records.
    let long = "😀".repeat(3900);
    send(
        &mut alice,
        json!({"type":"send","room":"r","text":long,"cid":"c1"}),
    );
    let ack = next_of(&mut alice, "ack");
    let got = next_of(&mut bob, "message");
    assert_eq!(got["id"], ack["id"]);
    assert_eq!(got["text"], long.as_str());
    send(&mut bob, json!({"type":"ping","t":7}));
    assert_eq!(next_of(&mut bob, "pong")["t"], 7);

    let (mut https, _) = tls_connect(addr, &cert.der);
    https
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    // The server closes after the response, with close_notify: a clean end of stream.
    https.read_to_end(&mut response).expect("read /healthz");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"ok\":true"), "{text}");

    // Plain HTTP on the TLS port is refused (not TLS), and the server keeps serving.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(T)).unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut junk = Vec::new();
    let _ = plain.read_to_end(&mut junk);
    assert!(
        !String::from_utf8_lossy(&junk).contains("\"ok\":true"),
        "plain HTTP must not be answered in the clear"
    );
    send(
        &mut alice,
        json!({"type":"send","room":"r","text":"still here","cid":"c2"}),
    );
    next_of(&mut alice, "ack");
    assert_eq!(next_of(&mut bob, "message")["text"], "still here");
}

#[test]
fn a_slow_tls_reader_gets_every_frame_intact_and_in_order() {
    let dir = TempDir::new().unwrap();
    let cert = certificate(dir.path(), "a");
    let mut flags = tls_flags(&cert);
    flags.extend(["--rate", "100000", "--burst", "100000"].map(String::from));
    let s = start(&flags);
    let addr = s.addr();
    let mut sender = login(addr, &cert.der, "sender");
    let mut slow = login(addr, &cert.der, "slow");
    for ws in [&mut sender, &mut slow] {
        send(ws, json!({"type":"join","room":"r"}));
        next_of(ws, "synced");
    }
    // 600 × 15.6 KB: more than loopback's socket buffers hold while `slow` reads nothing, so
    // the server's writes stop part-way through TLS records and resume when `slow` drains.
    const N: usize = 600;
    let text = "é".repeat(3900) + &"😀".repeat(100);
    for i in 0..N {
        send(
            &mut sender,
            json!({"type":"send","room":"r","text":text,"cid":format!("c{i}")}),
        );
        next_of(&mut sender, "ack");
    }
    let mut ids = Vec::new();
    while ids.len() < N {
        let v = next_of(&mut slow, "message");
        assert_eq!(v["text"], text.as_str());
        ids.push(id_of(&v));
    }
    assert_strictly_increasing(&ids, "a slow TLS reader's messages");
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_anyone() {
    let dir = TempDir::new().unwrap();
    let old = certificate(dir.path(), "live");
    let s = start(&tls_flags(&old));
    let addr = s.addr();
    let mut alice = login(addr, &old.der, "alice");
    send(&mut alice, json!({"type":"join","room":"r"}));
    next_of(&mut alice, "synced");

    // A renewal writes new files in place of the old ones.
    let new = certificate(dir.path(), "next");
    std::fs::copy(&new.cert_path, &old.cert_path).unwrap();
    std::fs::copy(&new.key_path, &old.key_path).unwrap();
    signal_pid(s.pid(), "HUP");
    let deadline = Instant::now() + T;
    loop {
        let (_, presented) = tls_connect_trusting(addr, &[old.der.clone(), new.der.clone()]);
        if presented == new.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The connection made before the reload goes on.
    send(
        &mut alice,
        json!({"type":"send","room":"r","text":"after reload","cid":"h1"}),
    );
    next_of(&mut alice, "ack");

    // Broken files on the next reload: the server says so and keeps the certificate it has.
    std::fs::write(&old.cert_path, "not a certificate").unwrap();
    signal_pid(s.pid(), "HUP");
    poll_until(T, "the failed reload to be logged", || {
        s.stderr()
            .contains("TLS certificate not reloaded")
            .then_some(())
    });
    let (_, presented) = tls_connect(addr, &new.der);
    assert_eq!(
        presented, new.der,
        "a failed reload keeps the previous certificate"
    );
    let mut bob = login(addr, &new.der, "bob");
    send(&mut bob, json!({"type":"join","room":"r"}));
    next_of(&mut bob, "synced");
}

#[test]
fn unusable_certificate_files_stop_the_start_with_a_clear_message() {
    let dir = TempDir::new().unwrap();
    let a = certificate(dir.path(), "a");
    let b = certificate(dir.path(), "b");
    let data = TempDir::new().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "chatd started with {args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cert = a.cert_path.to_str().unwrap();
    let wrong_key = b.key_path.to_str().unwrap();
    let err = run(&["--tls-cert", cert, "--tls-key", wrong_key]);
    assert!(err.contains("cannot be used together"), "{err}");
    let err = run(&[
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        wrong_key,
    ]);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    let err = run(&["--tls-cert", cert]);
    assert!(err.contains("--tls-key"), "{err}");
}
