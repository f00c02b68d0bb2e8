//! The admin socket: permissions, lifetime, robustness, and the one-server-per-directory rule.

mod admin_common;
mod common;

use admin_common::*;
use common::{TestServer, T};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::Command;

#[test]
fn the_socket_is_owner_only_and_removed_on_sigterm() {
    let mut server = TestServer::start(&[]);
    let sock = server.data_dir().join("admin.sock");
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    server.sigterm();
    assert!(server.wait_exit(T).success(), "SIGTERM exits 0");
    assert!(!sock.exists(), "the socket is removed on shutdown");
    // And with no server, admin works on the database directly.
    assert!(admin_json(server.data_dir(), &["stats"])["server"].is_null());
}

#[test]
fn a_second_server_on_the_same_directory_fails_and_the_first_keeps_running() {
    let mut server = TestServer::start(&[]);
    let dir = server.data_dir().to_owned();
    let dir = dir.as_path();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("locked") && err.contains("already running"),
        "a clear message: {err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "the second server never listened"
    );
    assert!(server.is_running());
    assert!(
        dir.join("admin.sock").exists(),
        "the first server's socket is untouched"
    );
    assert!(admin_json(dir, &["stats"])["server"].is_object());
    let mut c = server.register("alice");
    c.join("general");
}

#[test]
fn a_stale_socket_after_a_crash_is_harmless() {
    let mut server = TestServer::start(&[]);
    let dir = server.data_dir().to_owned();
    server.register("alice");
    server.kill9();
    assert!(dir.join("admin.sock").exists(), "left behind by kill -9");
    // No server answers: admin opens the database itself.
    let s = admin_json(&dir, &["stats"]);
    assert_eq!(s["users"], 1);
    assert!(s["server"].is_null());
    // A new server replaces the stale socket.
    server.restart();
    assert!(admin_json(&dir, &["stats"])["server"].is_object());
}

#[test]
fn a_server_whose_socket_does_not_answer_is_reported_clearly() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    std::fs::remove_file(dir.join("admin.sock")).unwrap();
    let e = admin(dir, &["stats"]).fails(1).to_owned();
    assert!(
        e.contains("a server holds the database") && e.contains("not answering"),
        "{e}"
    );
    let e = admin(dir, &["online"]).fails(1).to_owned();
    assert!(e.contains("not answering"), "{e}");
}

fn request(stream: &mut UnixStream, reader: &mut BufReader<UnixStream>, line: &[u8]) -> Value {
    stream.write_all(line).unwrap();
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"))
}

#[test]
fn malformed_requests_get_errors_and_the_server_keeps_serving() {
    let server = TestServer::start(&[]);
    let path = server.data_dir().join("admin.sock");
    let mut stream = UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for bad in [
        &b"not json\n"[..],
        b"{\"cmd\":\"self_destruct\"}\n",
        b"{\"cmd\":\"users_show\"}\n",
        b"[1,2,3]\n",
        b"{\"cmd\":\"messages_delete\",\"ids\":[-1]}\n",
        b"{\"cmd\":\"import\",\"lines\":[{\"type\":\"message\",\"room\":\"BAD\",\"id\":1,\"user\":\"u\",\"text\":\"t\",\"ts\":1}]}\n",
    ] {
        let r = request(&mut stream, &mut reader, bad);
        assert_eq!(r["err"]["kind"], "usage", "{r}");
    }
    let r = request(&mut stream, &mut reader, b"{\"cmd\":\"stats\"}\n");
    assert_eq!(r["ok"]["stats"]["rooms"], 0, "{r}");

    // A client that goes away in the middle of an export does not hurt the server.
    ExportFile::new(0)
        .room("r", 0)
        .message("r", 1, "u", "x", 1)
        .import_into(server.data_dir());
    let mut quitter = UnixStream::connect(&path).unwrap();
    quitter
        .write_all(b"{\"cmd\":\"export\",\"with_secrets\":false}\n")
        .unwrap();
    drop(quitter);

    // An oversized request is refused.
    let mut big = UnixStream::connect(&path).unwrap();
    big.set_read_timeout(Some(T)).unwrap();
    let mut big_reader = BufReader::new(big.try_clone().unwrap());
    let chunk = vec![b' '; 1 << 20];
    let mut reply = String::new();
    for _ in 0..40 {
        if big.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = big_reader.read_line(&mut reply);
    let r: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
    assert_eq!(r["err"]["kind"], "usage", "{r}");

    assert_eq!(admin_json(server.data_dir(), &["stats"])["messages"], 1);
    let mut c = server.register("alice");
    c.join("general");
}
