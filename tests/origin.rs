//! The `Origin` check on WebSocket upgrades: a page from another site cannot open a socket
//! (and so cannot use its visitors' browsers against logins and registrations), the server's own
//! pages and non-browser clients can, and `--allowed-origins` replaces the default.

mod common;

use common::*;

fn upgrade_status(server: &TestServer, origin: Option<&str>) -> String {
    let extra = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let ws = RawWs::connect_with_headers(server.addr(), &extra);
    ws.response_head
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn origin_rejections(server: &TestServer) -> String {
    server
        .metrics()
        .lines()
        .find(|l| l.starts_with("chatd_http_rejections_total{reason=\"origin\"}"))
        .unwrap_or_default()
        .to_owned()
}

const SWITCHING: &str = "HTTP/1.1 101 Switching Protocols";
const FORBIDDEN: &str = "HTTP/1.1 403 Forbidden";

#[test]
fn by_default_only_the_servers_own_pages_and_clients_without_origin_get_in() {
    let server = TestServer::start(&[]);
    let own = format!("http://{}", server.addr());
    assert_eq!(upgrade_status(&server, Some(&own)), SWITCHING);
    assert_eq!(upgrade_status(&server, None), SWITCHING);
    assert_eq!(
        upgrade_status(&server, Some("http://evil.example")),
        FORBIDDEN
    );
    let other_port = format!("http://127.0.0.1:{}", server.addr().port() ^ 1);
    assert_eq!(upgrade_status(&server, Some(&other_port)), FORBIDDEN);
    assert_eq!(upgrade_status(&server, Some("null")), FORBIDDEN);
    assert_eq!(
        origin_rejections(&server),
        "chatd_http_rejections_total{reason=\"origin\"} 3"
    );
    // A client without Origin still logs in normally.
    server.register("alice");
}

#[test]
fn allowed_origins_lists_exactly_who_may_connect() {
    let server = TestServer::start(&[
        "--allowed-origins",
        "https://chat.example.com,http://localhost:3000",
    ]);
    assert_eq!(
        upgrade_status(&server, Some("https://chat.example.com")),
        SWITCHING
    );
    assert_eq!(
        upgrade_status(&server, Some("http://LOCALHOST:3000")),
        SWITCHING
    );
    let own = format!("http://{}", server.addr());
    assert_eq!(upgrade_status(&server, Some(&own)), FORBIDDEN);
    assert_eq!(upgrade_status(&server, None), SWITCHING);

    let any = TestServer::start(&["--allowed-origins", "*"]);
    assert_eq!(upgrade_status(&any, Some("http://evil.example")), SWITCHING);
}

#[test]
fn a_malformed_allowed_origins_is_refused_at_start() {
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allowed-origins",
            "chat.example.com",
        ])
        .output()
        .expect("run chatd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allowed-origins"), "{stderr}");
}
