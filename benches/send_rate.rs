//! Send throughput and ack latency: chatd (strict durability, then relaxed) vs the Node `ws` peer.
//!
//! S senders (default 20) in one room, each keeping W sends in flight (default 8), plus R extra
//! receivers (default 20), for D seconds (default 5). Every connection in the room receives every
//! message, so each accepted send costs S+R deliveries. Reports acked sends per second, ack
//! latency percentiles and deliveries per second, and ratios to the peer measured in the same run.
//! chatd strict fsyncs before every ack (group commit); the peer keeps nothing on disk.
//!
//! Run: `cargo bench --bench send_rate`
//! Tune: CHATD_BENCH_SENDERS, CHATD_BENCH_RECEIVERS, CHATD_BENCH_WINDOW, CHATD_BENCH_SECONDS.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    acked: usize,
    delivered: usize,
    seconds: f64,
    latencies_us: Vec<u64>,
}

fn main() {
    let senders = env("CHATD_BENCH_SENDERS", 20);
    let receivers = env("CHATD_BENCH_RECEIVERS", 20);
    let window = env("CHATD_BENCH_WINDOW", 8);
    let seconds = env("CHATD_BENCH_SECONDS", 5) as u64;
    println!(
        "send rate: {senders} senders x {window} in flight, {receivers} extra receivers, one room, {seconds} s per server"
    );
    let unlimited = [
        "--rate",
        "1000000",
        "--burst",
        "1000000",
        "--send-queue",
        "1000000",
    ];
    let mut results = Vec::new();
    for (name, durability) in [("chatd strict", "strict"), ("chatd relaxed", "relaxed")] {
        let mut args = unlimited.to_vec();
        args.extend(["--durability", durability]);
        let server = start_chatd(name, &args);
        results.push((
            name.to_owned(),
            smol::block_on(run(&server, senders, receivers, window, seconds)),
        ));
    }
    if let Some(peer) = start_peer() {
        results.push((
            "node ws peer".into(),
            smol::block_on(run(&peer, senders, receivers, window, seconds)),
        ));
    }
    println!();
    println!("| server | acked sends/s | deliveries/s | ack p50 | ack p99 |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, r) in &results {
        let mut l = r.latencies_us.clone();
        l.sort_unstable();
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} ms | {:.2} ms |",
            r.acked as f64 / r.seconds,
            r.delivered as f64 / r.seconds,
            percentile(&l, 0.5) as f64 / 1000.0,
            percentile(&l, 0.99) as f64 / 1000.0,
        );
    }
    if let Some((_, peer)) = results.iter().find(|(n, _)| n == "node ws peer") {
        let peer_rate = peer.acked as f64 / peer.seconds;
        for (name, r) in results.iter().filter(|(n, _)| n != "node ws peer") {
            println!(
                "{name}: {:.2}x the peer's acked send rate",
                r.acked as f64 / r.seconds / peer_rate
            );
        }
    }
}

async fn run(
    server: &ServerProcess,
    senders: usize,
    receivers: usize,
    window: usize,
    seconds: u64,
) -> Run {
    let addr = server.addr;
    let (_, token) = register(addr, "bencher").await;
    let mut members = Vec::new();
    for _ in 0..senders + receivers {
        let mut ws = connect(addr).await;
        send(&mut ws, json!({"type":"auth","token":token})).await;
        recv_type(&mut ws, "welcome").await;
        send(&mut ws, json!({"type":"join","room":"bench"})).await;
        recv_type(&mut ws, "synced").await;
        members.push(ws);
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let receiver_tasks: Vec<_> = members
        .drain(senders..)
        .map(|mut ws| {
            smol::spawn(async move {
                let mut got = 0usize;
                // Count until the stream goes quiet after the end of the run.
                loop {
                    let quiet = Instant::now().max(end) + Duration::from_secs(2);
                    let next = futures_lite::future::or(
                        async { Some(recv(&mut ws, Duration::from_secs(60)).await) },
                        async {
                            smol::Timer::at(quiet).await;
                            None
                        },
                    )
                    .await;
                    match next {
                        Some(v) if v["type"] == "message" => got += 1,
                        Some(_) => {}
                        None => return got,
                    }
                }
            })
        })
        .collect();
    let sender_tasks: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(s, mut ws)| {
            smol::spawn(async move {
                let mut in_flight: HashMap<String, Instant> = HashMap::new();
                let mut latencies = Vec::new();
                let mut next = 0usize;
                loop {
                    while in_flight.len() < window && Instant::now() < end {
                        let cid = format!("s{s}-{next}");
                        next += 1;
                        in_flight.insert(cid.clone(), Instant::now());
                        send(&mut ws, json!({"type":"send","room":"bench","text":"benchmark message of typical length, about sixty bytes","cid":cid})).await;
                    }
                    if in_flight.is_empty() {
                        return latencies;
                    }
                    let v = recv(&mut ws, Duration::from_secs(30)).await;
                    if v["type"] == "ack" {
                        if let Some(sent) = v["cid"].as_str().and_then(|c| in_flight.remove(c)) {
                            latencies.push(sent.elapsed().as_micros() as u64);
                        }
                    }
                }
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    for task in sender_tasks {
        latencies_us.extend(task.await);
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut delivered = 0;
    for task in receiver_tasks {
        delivered += task.await;
    }
    let acked = latencies_us.len();
    println!("{}: {acked} acked in {seconds:.2} s", server.name);
    Run {
        acked,
        // Receivers saw `delivered`; senders receive the same broadcasts.
        delivered: delivered / receivers.max(1) * (senders + receivers),
        seconds,
        latencies_us,
    }
}
