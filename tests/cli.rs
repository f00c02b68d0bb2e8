//! The `chatd` command line: version, usage errors (exit 2) and bad settings (exit 1, naming the
//! flag or variable to fix), none of which may touch the data directory.

use std::process::{Command, Output};

fn chatd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatd"));
    cmd.args(args)
        .env_remove("CHATD_LISTEN")
        .env_remove("CHATD_DATA_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running chatd")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_prints_the_package_version() {
    let out = chatd(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("chatd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["serve", "--bogus"],
        &["frobnicate"],
        &["serve", "--listen"],
    ] {
        let out = chatd(args, &[]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "chatd {args:?}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).is_empty(), "chatd {args:?} explains itself");
    }
}

#[test]
fn bad_settings_exit_1_naming_what_to_fix_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    /// Extra flags, environment, and the name the error must mention.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--threads", "0"], &[], "--threads"),
        (&["--send-queue", "10"], &[], "--send-queue"),
        (&["--ping-interval", "soon"], &[], "--ping-interval"),
        (&["--registration", "maybe"], &[], "--registration"),
        (&["--durability", "eventual"], &[], "--durability"),
        (&["--rate", "-3"], &[], "--rate"),
        (&["--log", "chatd=[["], &[], "--log"),
        (&[], &[("CHATD_LISTEN", "not an address")], "CHATD_LISTEN"),
        (&[], &[("CHATD_MAX_FRAME", "12")], "--max-frame"),
    ];
    for (flags, env, named) in cases {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", data];
        if env.iter().any(|(k, _)| *k == "CHATD_LISTEN") {
            args.drain(1..3);
        }
        args.extend_from_slice(flags);
        let out = chatd(&args, env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{flags:?} {env:?}: {err}");
        assert!(
            err.contains(named),
            "{flags:?} {env:?} should name {named}: {err}"
        );
        assert!(
            !std::path::Path::new(data).exists(),
            "{flags:?} {env:?}: a bad setting must not create the data directory"
        );
    }
}
