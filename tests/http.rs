//! PROTOCOL.md "Transport": the same port serves plain HTTP (`/`, `/healthz`, `/metrics`,
//! 404 for unknown paths, 426 for a non-upgrade request to `/ws`).
mod common;
use common::*;

#[test]
fn root_serves_the_web_client_as_html() {
    let s = TestServer::start(&[]);
    let r = s.get("/");
    assert_eq!(r.status, 200, "GET / status; body: {:.300}", r.text());
    let ct = r
        .header("content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        ct.starts_with("text/html"),
        "GET / content-type should be text/html, got {ct:?}"
    );
    let body = r.text().to_ascii_lowercase();
    assert!(
        body.contains("<html") || body.contains("<!doctype html"),
        "GET / body is not an HTML page: {:.300}",
        r.text()
    );
}

#[test]
fn healthz_reports_status_json() {
    let s = TestServer::start(&[]);
    let r = s.get("/healthz");
    assert_eq!(r.status, 200);
    let ct = r
        .header("content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        ct.starts_with("application/json"),
        "healthz content-type should be JSON, got {ct:?}"
    );
    let v = r.json();
    assert_eq!(v["ok"], true, "healthz.ok: {v}");
    assert!(
        v["version"]
            .as_str()
            .map(|s| !s.is_empty())
            .unwrap_or(false),
        "healthz.version must be a non-empty string: {v}"
    );
    let up = v["uptime"]
        .as_f64()
        .unwrap_or_else(|| panic!("healthz.uptime must be a number (seconds): {v}"));
    assert!(
        (0.0..3600.0).contains(&up),
        "uptime in seconds of a fresh server: {v}"
    );
    assert!(
        v["connections"].is_u64(),
        "healthz.connections must be a count: {v}"
    );
}

#[test]
fn healthz_counts_websocket_connections() {
    let s = TestServer::start(&[]);
    let base = s.healthz()["connections"].as_u64().unwrap();
    let a = s.register("alice");
    let b = s.register("bob");
    let raw = s.connect(); // not authenticated yet: still a WebSocket connection
    let want = base + 3;
    poll_until(T, "healthz.connections to count 3 more WebSockets", || {
        let n = s.healthz()["connections"].as_u64().unwrap();
        (n == want).then_some(())
    });
    a.close();
    b.drop_tcp();
    raw.drop_tcp();
    poll_until(
        T,
        "healthz.connections to drop back after the clients went away",
        || {
            let n = s.healthz()["connections"].as_u64().unwrap();
            (n == base).then_some(())
        },
    );
}

#[test]
fn uptime_advances() {
    let s = TestServer::start(&[]);
    let u0 = s.healthz()["uptime"].as_f64().unwrap();
    poll_until(
        ms(4000),
        "healthz.uptime to advance by at least one second",
        || {
            let u = s.healthz()["uptime"].as_f64().unwrap();
            (u >= u0 + 1.0).then_some(())
        },
    );
}

#[test]
fn metrics_is_prometheus_text() {
    let s = TestServer::start(&[]);
    let _c = s.register("alice");
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    let ct = r
        .header("content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        ct.starts_with("text/plain") || ct.starts_with("application/openmetrics-text"),
        "metrics content-type should be Prometheus text, got {ct:?}"
    );
    let body = r.text();
    assert!(
        body.contains("# TYPE "),
        "Prometheus text has # TYPE lines: {body:.500}"
    );
    let mut samples = 0;
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // name{labels} value [timestamp]
        let (name_part, rest) = match line.find('{') {
            Some(i) => {
                let close = line
                    .rfind('}')
                    .unwrap_or_else(|| panic!("unclosed label set: {line}"));
                (&line[..i], line[close + 1..].trim())
            }
            None => {
                let mut it = line.splitn(2, ' ');
                (it.next().unwrap(), it.next().unwrap_or("").trim())
            }
        };
        assert!(
            !name_part.is_empty()
                && name_part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in line {line:?}"
        );
        let value = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let ok = value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN");
        assert!(ok, "bad sample value in {line:?}");
        samples += 1;
    }
    assert!(samples > 0, "metrics has no samples: {body:.500}");
}

#[test]
fn unknown_path_is_404() {
    let s = TestServer::start(&[]);
    for p in ["/nope", "/ws/extra", "/healthz/x", "/metricsx"] {
        let r = s.get(p);
        assert_eq!(r.status, 404, "GET {p}");
    }
}

#[test]
fn non_upgrade_request_to_ws_is_426() {
    let s = TestServer::start(&[]);
    let r = s.get("/ws");
    assert_eq!(r.status, 426, "plain GET /ws must be 426 Upgrade Required");
    // The server keeps working afterwards.
    let mut c = s.register("alice");
    c.barrier();
}
