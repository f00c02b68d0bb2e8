//! Helpers for the `chatd admin` tests: run the real binary against a data directory, build
//! export files with chosen ids and timestamps.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_chatd");

/// What an admin invocation did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Requires exit 0; returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "expected success, got exit {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Requires exit `code` and a one-sentence error on stderr.
    pub fn fails(&self, code: i32) -> &str {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "a failure must say why on stderr"
        );
        &self.stderr
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// `chatd admin ARGS --data-dir DIR`, with `stdin` piped in (or none), bounded by a deadline.
pub fn admin_in(dir: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    admin_env(dir, args, stdin, &[])
}

/// Like [`admin_in`], with extra environment variables.
pub fn admin_env(dir: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.arg("admin")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("CHATD_DATA_DIR")
        .env_remove("CHATD_PROGRESS_EVERY")
        .env_remove("CHATD_CLUSTER");
    // The directory of a node standing in for one server (`CHATD_TEST_CLUSTER=1`): the command
    // acts on its cluster, as an admin of a cluster would run it.
    if let Some(url) = crate::common::cluster_of(dir) {
        cmd.env("CHATD_CLUSTER", url);
    }
    cmd.envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn chatd admin");
    if let Some(input) = stdin {
        // The command may exit (usage error) before reading its input.
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    }
    // Drain the pipes while waiting: a large output would otherwise block the child.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
        buf
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chatd admin {args:?} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = std::process::Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    };
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn admin(dir: &Path, args: &[&str]) -> Out {
    admin_in(dir, args, None)
}

/// `chatd admin ARGS --json`, required to succeed.
pub fn admin_json(dir: &Path, args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    admin(dir, &all).json()
}

/// Adds a user with a password through `--password-stdin`.
pub fn add_user(dir: &Path, name: &str, password: &str) {
    admin_in(
        dir,
        &["users", "add", name, "--password-stdin"],
        Some(&format!("{password}\n")),
    )
    .ok();
}

/// Builds export files line by line.
pub struct ExportFile {
    lines: Vec<Value>,
}

impl ExportFile {
    pub fn new(id_floor: u64) -> ExportFile {
        ExportFile {
            lines: vec![json!({"type":"header","format":"chatd-export","version":1,
                "exported_ms": 0, "id_floor": id_floor})],
        }
    }

    pub fn user(mut self, name: &str) -> Self {
        self.lines
            .push(json!({"type":"user","name":name,"created_ms":1_000,
            "banned":false,"token_epoch":0}));
        self
    }

    pub fn room(mut self, name: &str, last_id: u64) -> Self {
        self.lines
            .push(json!({"type":"room","name":name,"created_ms":1_000,
            "last_id":last_id,"count":0}));
        self
    }

    pub fn message(mut self, room: &str, id: u64, user: &str, text: &str, ts: u64) -> Self {
        self.lines
            .push(json!({"type":"message","room":room,"id":id,"user":user,
            "text":text,"ts":ts}));
        self
    }

    pub fn write(&self, path: &Path) {
        let text: String = self.lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(path, text).unwrap();
    }

    /// Writes the file next to `dir` and imports it (server running or not).
    pub fn import_into(&self, dir: &Path) -> Value {
        let file = tempfile::NamedTempFile::new().unwrap();
        self.write(file.path());
        admin_json(dir, &["import", file.path().to_str().unwrap()])
    }
}

/// Ids of a `messages list --json` reply, in output order.
pub fn ids(list: &Value) -> Vec<u64> {
    list.as_array()
        .expect("messages list --json is an array")
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

/// Polls `f` until it returns Some, at most `timeout`.
pub fn eventually<R>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<R>) -> R {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = f() {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An ISO 8601 time for ms since the epoch (what `--since` and `--older-than` accept).
pub fn iso(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
