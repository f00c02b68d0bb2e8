//! HTTP-level rejections are counted by reason in /metrics, and `--metrics-listen` moves
//! `/healthz` and `/metrics` off the main port.

mod common;

use common::*;
use std::io::Read;
use std::net::{TcpListener, TcpStream};

fn rejections(metrics: &str, reason: &str) -> u64 {
    metric_sample(
        metrics,
        &format!("chatd_http_rejections_total{{reason=\"{reason}\"}}"),
    ) as u64
}

#[test]
fn malformed_oversized_and_unfinished_heads_are_counted() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    assert_eq!(http_request(addr, "NOT HTTP\r\n\r\n").status, 400);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(http_request(addr, &big).status, 431);
    // A head that never ends is dropped after the server's 10 s head timeout.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = silent.read_to_end(&mut sink);
    let metrics = server.metrics();
    assert_eq!(rejections(&metrics, "malformed"), 1);
    assert_eq!(rejections(&metrics, "head_too_large"), 1);
    assert_eq!(rejections(&metrics, "head_timeout"), 1);
    assert!(
        server.stderr().contains("HTTP request refused"),
        "refusals are logged"
    );
}

#[test]
fn metrics_listen_serves_health_and_metrics_there_only() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let ops = format!("127.0.0.1:{port}");
    let server = TestServer::start(&["--metrics-listen", &ops]);
    let ops = ops.parse().unwrap();
    let health = http_get(ops, "/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["ok"], true);
    let metrics = http_get(ops, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("chatd_connections"));
    assert_eq!(http_get(ops, "/").status, 404);
    assert_eq!(http_get(ops, "/ws").status, 404);
    assert_eq!(server.get("/healthz").status, 404);
    assert_eq!(server.get("/metrics").status, 404);
    assert_eq!(server.get("/").status, 200);
    server.register("alice");
}
