//! Memory per idle authenticated connection, chatd vs the Node `ws` peer.
//!
//! Opens N connections (default 10,000; `CHATD_BENCH_CONNS` to change), each authenticated and
//! joined to one room, then reads the server's resident memory. Reports KiB per connection and
//! the ratio to the peer measured in the same run.
//!
//! Run: `cargo bench --bench idle_memory`

mod support;

use std::time::Instant;

use serde_json::json;
use support::*;

fn main() {
    let conns: usize = std::env::var("CHATD_BENCH_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    println!("idle memory: {conns} authenticated connections joined to one room");
    let chatd = start_chatd(
        "chatd",
        &[
            "--max-connections",
            "20000",
            "--idle-timeout",
            "10m",
            "--ping-interval",
            "10m",
        ],
    );
    let chatd_kib = smol::block_on(measure(&chatd, conns, true));
    drop(chatd);
    let peer = start_peer();
    let peer_kib = peer
        .as_ref()
        .map(|p| smol::block_on(measure(p, conns, false)));
    println!();
    println!("| server | KiB per idle connection |");
    println!("| --- | --- |");
    println!("| chatd | {chatd_kib:.2} |");
    if let Some(peer_kib) = peer_kib {
        println!("| node ws (peer) | {peer_kib:.2} |");
        println!(
            "\nchatd uses {:.2}x the peer's memory per connection",
            chatd_kib / peer_kib
        );
    }
}

async fn measure(server: &ServerProcess, conns: usize, chatd: bool) -> f64 {
    let (mut first, token) = register(server.addr, "idler").await;
    send(&mut first, json!({"type":"join","room":"lobby"})).await;
    recv_type(&mut first, "synced").await;
    let pid = server.child.id();
    let before = rss_kib(pid);
    let started = Instant::now();
    let mut open = Vec::with_capacity(conns);
    for batch in 0..conns.div_ceil(500) {
        let n = 500.min(conns - batch * 500);
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let token = token.clone();
                let addr = server.addr;
                smol::spawn(async move {
                    let mut ws = connect(addr).await;
                    send(&mut ws, json!({"type":"auth","token":token})).await;
                    recv_type(&mut ws, "welcome").await;
                    send(&mut ws, json!({"type":"join","room":"lobby"})).await;
                    recv_type(&mut ws, "synced").await;
                    ws
                })
            })
            .collect();
        for task in tasks {
            open.push(task.await);
        }
    }
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 / conns as f64;
    println!(
        "{}: RSS {before} KiB -> {after} KiB with {} connections (opened in {:.1?}): {per:.2} KiB each{}",
        server.name,
        open.len(),
        started.elapsed(),
        if chatd { "" } else { " (peer)" }
    );
    per
}
