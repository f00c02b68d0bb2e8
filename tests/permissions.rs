//! The data directory is private to chatd's account whatever the umask, and a database that
//! other users can reach is refused, by the server and by the offline admin commands alike.
//!
//! Every test here runs under umask 000 (set once for this test binary, inherited by the
//! processes it starts), the worst an operator's environment can hand chatd.

mod admin_common;
mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

fn loose_umask() {
    static SET: Once = Once::new();
    // SAFETY: umask only swaps the process's file creation mask.
    SET.call_once(|| unsafe {
        libc::umask(0);
    });
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every directory from `dir` down must be 0700 and every file 0600.
fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{} is not 0700", dir.display());
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            assert_private(&path);
        } else if kind.is_file() {
            assert_eq!(mode(&path), 0o600, "{} is not 0600", path.display());
        }
    }
}

/// Runs `chatd serve` on `data_dir`, which must refuse to start: returns its stderr. A server
/// that starts anyway is killed after the deadline and the test fails.
fn serve_refused(data_dir: &Path) -> String {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd serve");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = poll_until(Duration::from_secs(15), "chatd serve to exit", || {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        child.try_wait().unwrap()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "chatd serve must refuse to start; stderr: {stderr}"
    );
    stderr
}

#[test]
fn a_server_under_umask_000_keeps_its_directory_and_files_private() {
    loose_umask();
    let dir = tempfile::TempDir::new().unwrap();
    assert_eq!(mode(dir.path()), 0o777, "the test needs a loose umask");
    let mut server = TestServer::start_in(dir, &[]);
    let mut alice = server.register("alice");
    alice.join("general");
    alice.say("general", "for alice's eyes only");
    assert_private(server.data_dir());
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert_private(server.data_dir());
}

#[test]
fn a_server_refuses_a_database_other_users_can_read() {
    loose_umask();
    let mut server = TestServer::start(&[]);
    server.register("alice");
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    let data_dir = server.data_dir().to_path_buf();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stderr = serve_refused(&data_dir);
    assert!(
        stderr.contains("other users can access it") && stderr.contains("chmod -R go-rwx"),
        "the refusal must say what is wrong and how to fix it: {stderr}"
    );
    assert_eq!(
        mode(&data_dir),
        0o755,
        "a refused directory is left as found"
    );
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    server.restart();
    server.login("alice", PASSWORD);
}

#[test]
fn the_offline_admin_creates_a_private_database_and_refuses_an_exposed_one() {
    loose_umask();
    let tmp = tempfile::TempDir::new().unwrap();
    let data_dir = tmp.path().join("new").join("data");
    admin_common::add_user(&data_dir, "alice", PASSWORD);
    assert_private(&data_dir);

    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o705)).unwrap();
    let out = admin_common::admin(&data_dir, &["users", "list"]);
    let stderr = out.fails(1);
    assert!(
        stderr.contains("other users can access it") && stderr.contains("chmod -R go-rwx"),
        "{stderr}"
    );
}
