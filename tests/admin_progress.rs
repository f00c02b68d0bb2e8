//! Progress output of the long admin commands when standard error is not a terminal (as here:
//! it is a pipe): plain progress lines and a summary line on stderr, standard output unchanged,
//! nothing with `--quiet`; and through a running server, progress frames on the admin socket
//! only for clients that ask.

mod admin_common;
mod common;

use admin_common::*;
use common::TestServer;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A progress line after every tick, so that short commands show some.
const EVERY_TICK: &[(&str, &str)] = &[("CHATD_PROGRESS_EVERY", "0s")];

const MESSAGES: u64 = 20_000;

fn run(dir: &Path, args: &[&str]) -> Out {
    let out = admin_env(dir, args, None, EVERY_TICK);
    out.ok();
    out
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// Checks that stderr holds progress lines of `what` and ends with its summary, and that every
/// line is plain text (no terminal control characters); returns the progress lines.
fn progress_lines<'a>(stderr: &'a str, what: &str, summary: &str) -> Vec<&'a str> {
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "plain lines only when stderr is not a terminal: {stderr:?}"
    );
    let prefix = format!("{what}: ");
    let ours: Vec<&str> = lines(stderr)
        .into_iter()
        .filter(|l| l.starts_with(&prefix))
        .collect();
    let last = ours
        .last()
        .unwrap_or_else(|| panic!("no {what} line: {stderr}"));
    assert!(
        last.starts_with(&format!("{what}: {summary} in ")),
        "summary line `{last}` should read `{what}: {summary} in N s, R/s`\n{stderr}"
    );
    ours[..ours.len() - 1].to_vec()
}

/// Generates a database and exports it to a file.
fn generated(dir: &Path) -> std::path::PathBuf {
    let out = run(
        dir,
        &[
            "generate",
            "--rooms",
            "4",
            "--messages",
            &MESSAGES.to_string(),
            "--users",
            "5",
        ],
    );
    let stdout = out.stdout.clone();
    assert!(
        stdout.starts_with("generated 5 user(s), 4 room(s), 20000 message(s) in ")
            && stdout.ends_with(" s\n")
            && stdout.lines().count() == 1,
        "generate's stdout is its one line as before: {stdout:?}"
    );
    let during = progress_lines(&out.stderr, "generate", "20,000 messages");
    assert!(
        during
            .iter()
            .any(|l| l.contains(" / 20,000 messages (") && l.contains("%)")),
        "generate shows position / total: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("messages written"),
        "the old progress lines are gone: {}",
        out.stderr
    );
    let file = dir.join("export.jsonl");
    let out = run(dir, &["export", "--out", file.to_str().unwrap()]);
    assert_eq!(
        out.stdout, "exported 5 user(s), 0 session(s), 4 room(s), 20000 message(s)\n",
        "export --out prints its one summary sentence on stdout as before"
    );
    let during = progress_lines(&out.stderr, "export", "20,000 messages");
    assert!(
        during
            .iter()
            .any(|l| l.starts_with("export: ") && l.contains(" / 20,000 messages (")),
        "the total comes from the room lines: {}",
        out.stderr
    );
    file
}

#[test]
fn long_commands_print_plain_progress_on_stderr_and_leave_stdout_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = generated(dir.path());
    let file = file.to_str().unwrap();

    // Export to stdout: stdout is the export and nothing else, with or without progress.
    let shown = run(dir.path(), &["export"]);
    let quiet = run(dir.path(), &["export", "--quiet"]);
    let body = |s: &str| s.lines().skip(1).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        body(&shown.stdout),
        body(&quiet.stdout),
        "same export (after the header, which carries the time)"
    );
    assert_eq!(
        shown.stdout.lines().count() as u64,
        1 + 5 + 4 + MESSAGES,
        "header, users, rooms, messages"
    );
    for line in shown.stdout.lines() {
        serde_json::from_str::<Value>(line).expect("every stdout line is an export line");
    }
    progress_lines(&shown.stderr, "export", "20,000 messages");
    assert!(
        shown.stderr.contains("exported 5 user(s)"),
        "{}",
        shown.stderr
    );
    assert_eq!(
        quiet.stderr, "exported 5 user(s), 0 session(s), 4 room(s), 20000 message(s)\n",
        "--quiet leaves only the export's own note on stderr"
    );

    // Import into two fresh directories, one quietly: the same stdout, progress only on one.
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let shown = run(a.path(), &["import", file, "--json"]);
    let quiet = run(b.path(), &["import", file, "--json", "--quiet"]);
    assert_eq!(shown.stdout, quiet.stdout, "import --json is unchanged");
    assert_eq!(shown.json()["messages"], MESSAGES);
    let during = progress_lines(&shown.stderr, "import", "20,000 messages");
    assert!(
        during.iter().any(|l| l.contains(" / 20,000 messages (")),
        "{}",
        shown.stderr
    );
    assert!(
        shown
            .stderr
            .contains("import: 20,000 / 20,000 messages (100 %)"),
        "the last batch brings it to 100 %: {}",
        shown.stderr
    );
    assert_eq!(quiet.stderr, "", "--quiet: nothing on stderr");
    let shown = run(a.path(), &["import", file]);
    let quiet = run(b.path(), &["import", file, "--quiet"]);
    assert_eq!(shown.stdout, quiet.stdout, "the table for people too");
    assert_eq!(
        shown.stdout,
        "imported 0 user(s) (5 existed), 0 session(s), 0 new room(s), 0 message(s) (20000 existed)\n"
    );

    // prune --keep-last: what goes is known in advance, so lines have a total.
    let shown = run(a.path(), &["prune", "--keep-last", "1000", "--json"]);
    let quiet = run(
        b.path(),
        &["prune", "--keep-last", "1000", "--json", "--quiet"],
    );
    assert_eq!(shown.stdout, quiet.stdout, "prune --json is unchanged");
    assert_eq!(shown.json()["removed"], 16_000);
    let during = progress_lines(&shown.stderr, "prune", "16,000 messages");
    assert!(
        during
            .iter()
            .any(|l| l.contains(" / 16,000 messages (") && l.contains("; room ")),
        "{}",
        shown.stderr
    );
    assert_eq!(quiet.stderr, "");

    // prune --older-than: the total is unknown, lines count and say which room.
    let shown = run(a.path(), &["prune", "--older-than", "0s"]);
    let quiet = run(b.path(), &["prune", "--older-than", "0s", "--quiet"]);
    assert_eq!(shown.stdout, quiet.stdout, "the prune table is unchanged");
    let during = progress_lines(&shown.stderr, "prune", "4,000 messages");
    assert!(
        during
            .iter()
            .any(|l| l.contains(" messages, ") && l.contains("; room 4 of 4")),
        "{}",
        shown.stderr
    );

    // rooms prune --empty: every room is empty now.
    let shown = run(
        a.path(),
        &["rooms", "prune", "--empty", "--older-than", "0s"],
    );
    let quiet = run(
        b.path(),
        &["rooms", "prune", "--empty", "--older-than", "0s", "--quiet"],
    );
    assert_eq!(shown.stdout, "deleted 4 empty room(s)\n");
    assert_eq!(shown.stdout, quiet.stdout);
    let during = progress_lines(&shown.stderr, "rooms prune", "4 rooms");
    assert!(
        during
            .iter()
            .any(|l| l.starts_with("rooms prune: 4 / 4 rooms (100 %)")),
        "{}",
        shown.stderr
    );
    assert_eq!(quiet.stderr, "");

    // compact: stdout is its one line; entries copied out of the counters' estimate.
    let shown = run(a.path(), &["compact"]);
    assert!(
        shown.stdout.starts_with("compacted ")
            && shown.stdout.ends_with(" entries copied)\n")
            && shown.stdout.lines().count() == 1,
        "{:?}",
        shown.stdout
    );
    let entries: String = shown
        .stdout
        .rsplit('(')
        .next()
        .unwrap()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let entries: u64 = entries.parse().unwrap();
    let during = progress_lines(
        &shown.stderr,
        "compact",
        &format!("{} entries", chatd::admin::progress::group(entries)),
    );
    assert!(
        during.iter().any(|l| l.contains("; verifying the copy")),
        "{}",
        shown.stderr
    );
    let quiet = run(b.path(), &["compact", "--json", "--quiet"]);
    assert_eq!(quiet.stderr, "");
    assert!(quiet.json()["entries"].as_u64().is_some());
}

#[test]
fn without_a_setting_a_short_command_prints_only_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    ExportFile::new(0)
        .room("a", 0)
        .message("a", 1, "u", "one", 1_000)
        .message("a", 2, "u", "two", 2_000)
        .import_into(dir.path());
    // The default interval is 5 s: a prune of two messages shows no progress line.
    let out = admin(dir.path(), &["prune", "--keep-last", "0"]);
    out.ok();
    let ours = lines(&out.stderr);
    assert_eq!(ours.len(), 1, "{}", out.stderr);
    assert!(
        ours[0].starts_with("prune: 2 messages in "),
        "{}",
        out.stderr
    );
}

#[test]
fn a_failing_command_prints_no_summary() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    let header = r#"{"type":"header","format":"nope","version":1,"exported_ms":0,"id_floor":0}"#;
    std::fs::write(&bad, format!("{header}\n")).unwrap();
    let args = ["import", bad.to_str().unwrap()];
    let err = admin(dir.path(), &args).fails(2).to_owned();
    assert_eq!(lines(&err).len(), 1, "only the error: {err}");
    assert!(err.starts_with("chatd admin: "), "{err}");
    // Even with a line per tick: progress while reading, no summary, the error last.
    let out = admin_env(dir.path(), &args, None, EVERY_TICK);
    let err = out.fails(2);
    assert!(
        !lines(err)
            .iter()
            .any(|l| l.starts_with("import: ") && l.contains(" in ")),
        "no summary line: {err}"
    );
    assert!(
        lines(err).last().unwrap().starts_with("chatd admin: "),
        "the error is the last line: {err}"
    );
}

#[test]
fn through_a_running_server_prune_and_import_show_progress_too() {
    let gen = tempfile::tempdir().unwrap();
    let file = generated(gen.path());
    let server = TestServer::start(&[]);
    let d = server.data_dir();

    let out = run(d, &["import", file.to_str().unwrap(), "--json"]);
    assert_eq!(out.json()["messages"], MESSAGES);
    progress_lines(&out.stderr, "import", "20,000 messages");

    let out = run(d, &["prune", "--keep-last", "1000", "--json"]);
    assert_eq!(out.json()["removed"], 16_000);
    let during = progress_lines(&out.stderr, "prune", "16,000 messages");
    assert!(
        during.iter().any(|l| l.contains(" / 16,000 messages (")),
        "the server streams progress (at least its first report): {}",
        out.stderr
    );

    let out = run(d, &["export", "--quiet"]);
    assert_eq!(out.stdout.lines().count() as u64, 1 + 5 + 4 + 4_000);
    assert!(
        out.stderr.starts_with("exported 5 user(s)"),
        "{}",
        out.stderr
    );
}

/// Sends one raw request line and returns every frame up to the reply.
fn frames(path: &Path, line: &str) -> Vec<Value> {
    let mut stream = UnixStream::connect(path).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    stream.write_all(line.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    let mut out = Vec::new();
    loop {
        let mut text = String::new();
        assert!(
            reader.read_line(&mut text).unwrap() > 0,
            "connection closed"
        );
        let frame: Value = serde_json::from_str(&text).unwrap();
        let end = frame.get("ok").is_some() || frame.get("err").is_some();
        out.push(frame);
        if end {
            return out;
        }
    }
}

#[test]
fn the_socket_sends_progress_frames_only_to_clients_that_ask() {
    let server = TestServer::start(&[]);
    let d = server.data_dir();
    let mut file = ExportFile::new(0).room("a", 0);
    for id in 1..=3_000 {
        file = file.message("a", id, "u", "text", 1_000 + id);
    }
    file.import_into(d);
    let sock = d.join("admin.sock");
    let plain = frames(
        &sock,
        r#"{"cmd":"prune","rule":{"before_ms":null,"keep_last":2000},"room":null,"dry_run":false}"#,
    );
    assert_eq!(plain.len(), 1, "only the reply: {plain:?}");
    assert_eq!(plain[0]["ok"]["pruned"]["removed"], 1_000);
    let asked = frames(
        &sock,
        r#"{"cmd":"prune","rule":{"before_ms":null,"keep_last":1000},"room":null,"dry_run":false,"progress":true}"#,
    );
    assert!(asked.len() >= 2, "progress, then the reply: {asked:?}");
    assert_eq!(asked[0]["progress"]["done"], 0);
    assert_eq!(asked[0]["progress"]["total"], 1_000);
    for frame in &asked[..asked.len() - 1] {
        assert!(frame.get("progress").is_some(), "{frame}");
    }
    assert_eq!(asked.last().unwrap()["ok"]["pruned"]["removed"], 1_000);
}
