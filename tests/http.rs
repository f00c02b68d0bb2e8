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

#[test]
fn assets_referenced_by_the_page_are_served() {
    // "GET / the web client (it may load further static files of its own)": every local
    // src/href in the page must resolve.
    let s = TestServer::start(&[]);
    let page = s.get("/").text();
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = page.as_str();
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').unwrap();
            let r = &rest[..end];
            if !r.contains("://") && !r.starts_with("data:") && !r.starts_with('#') && !r.is_empty()
            {
                refs.push(r.to_string());
            }
            rest = &rest[end..];
        }
    }
    for r in refs {
        let path = if r.starts_with('/') {
            r.clone()
        } else {
            format!("/{r}")
        };
        let resp = s.get(&path);
        assert_eq!(
            resp.status, 200,
            "asset {path} referenced by GET / is not served"
        );
        let ct = resp
            .header("content-type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        if path.ends_with(".js") {
            assert!(ct.contains("javascript"), "{path} content-type {ct:?}");
        } else if path.ends_with(".css") {
            assert!(ct.starts_with("text/css"), "{path} content-type {ct:?}");
        }
    }
}

#[test]
fn installable_client_files_are_served() {
    // The service worker, the favicon browsers ask for unprompted, and every icon the manifest
    // names (the page's own links are covered above).
    let s = TestServer::start(&[]);
    let sw = s.get("/sw.js");
    assert_eq!(sw.status, 200);
    let ct = sw.header("content-type").unwrap_or_default().to_string();
    assert!(ct.contains("javascript"), "sw.js content-type {ct:?}");
    let ico = s.get("/favicon.ico");
    assert_eq!(ico.status, 200);
    assert_eq!(ico.header("content-type"), Some("image/x-icon"));
    let manifest = s.get("/manifest.webmanifest");
    assert_eq!(manifest.status, 200);
    let m = manifest.json();
    let icons = m["icons"].as_array().expect("manifest icons");
    assert!(!icons.is_empty());
    for icon in icons {
        let src = icon["src"].as_str().expect("icon src");
        let r = s.get(src);
        assert_eq!(r.status, 200, "icon {src}");
        let ct = r.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("image/"), "icon {src} content-type {ct:?}");
    }
}

#[test]
fn websocket_upgrade_on_an_unknown_path_is_404() {
    let s = TestServer::start(&[]);
    let r = http_request(
        s.addr(),
        &format!(
            "GET /chat HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            s.addr()
        ),
    );
    assert_eq!(r.status, 404, "only /ws upgrades");
}

#[test]
fn max_connections_is_enforced_and_frees_up() {
    let s = TestServer::start(&["--max-connections", "2"]);
    let a = s.register("alice");
    let _b = s.register("bob");
    // A third WebSocket must not get a working session. How it is refused is not specified
    // (HTTP error, close frame, or closed socket), so accept any refusal.
    let refused = match std::net::TcpStream::connect_timeout(&s.addr(), T) {
        Err(_) => true,
        Ok(stream) => {
            stream.set_read_timeout(Some(T)).unwrap();
            match tungstenite::client(s.ws_url(), stream) {
                Err(_) => true,
                Ok((ws, _)) => {
                    let mut c = Client::from_ws(ws, s.addr());
                    c.send_json(&serde_json::json!({"type":"auth","user":"carol","password":PASSWORD,"register":true}));
                    !matches!(c.recv(T), Event::Json(v) if v["type"] == "welcome")
                }
            }
        }
    };
    assert!(
        refused,
        "a third connection over --max-connections 2 got a session"
    );
    a.close();
    // Once a slot is free, a new connection works.
    poll_until(T, "a slot to free up", || {
        let stream = std::net::TcpStream::connect_timeout(&s.addr(), T).ok()?;
        stream.set_read_timeout(Some(T)).unwrap();
        let (ws, _) = tungstenite::client(s.ws_url(), stream).ok()?;
        let mut c = Client::from_ws(ws, s.addr());
        c.send_json(&serde_json::json!({"type":"auth","user":"alice","password":PASSWORD}));
        matches!(c.recv(T), Event::Json(v) if v["type"] == "welcome").then_some(())
    });
}

#[test]
fn passwords_are_not_stored_in_plain_text() {
    let mut s = TestServer::start(&[]);
    let pw = "Plaintext-Canary-93f1c7";
    drop(Client::register(s.addr(), "alice", pw));
    s.login("alice", pw);
    s.sigterm();
    assert!(s.wait_exit(std::time::Duration::from_secs(10)).success());
    let mut stack = vec![s.data_dir().to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files += 1;
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(pw.len()).any(|w| w == pw.as_bytes()),
                    "the plain password is stored in {}",
                    p.display()
                );
            }
        }
    }
    assert!(files > 0, "the data dir holds the store");
}
