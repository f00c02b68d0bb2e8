//! Durable sends (issue 7 item 4): publishers each alone in its own room, W sends in flight
//! each, ack latency from send to ack; and one sender in lock-step (1 in flight).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::net::{frame_type, Ev, Net};
use super::procs::cpu_ticks;
use super::setup::quantile;

#[derive(Clone, Debug, Default)]
pub struct Durable {
    pub acked: u64,
    pub secs: f64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub closed: u64,
    /// Acks still missing when the drain ended.
    pub unacked: u64,
    pub server_cpu_pct: Option<f64>,
}

/// Connections `base..base + pubs`, publisher j sending into room `rooms[j]`, `inflight` each,
/// for `secs`; then waits (bounded) for the outstanding acks. Only acks of sends made inside the
/// window count toward the rate (all count toward the latency).
#[allow(clippy::too_many_arguments)]
pub fn window(
    net: &mut Net,
    pid: Option<u32>,
    base: usize,
    rooms: &[String],
    inflight: usize,
    secs: f64,
    tag: u32,
) -> Durable {
    let pubs = rooms.len();
    let mut pending: Vec<VecDeque<Instant>> = vec![VecDeque::new(); pubs];
    let mut lat: Vec<u32> = Vec::new();
    let (mut acked, mut errors, mut closed) = (0u64, 0u64, 0u64);
    let mut seq = 0u64;
    let t0 = Instant::now();
    let stop = t0 + Duration::from_secs_f64(secs);
    let cpu0 = pid.and_then(cpu_ticks);
    let mut cpu1 = None;
    let mut ready: Vec<usize> = (0..pubs)
        .flat_map(|p| std::iter::repeat_n(p, inflight))
        .collect();
    let hard_end = stop + Duration::from_secs(15);
    while Instant::now() < hard_end {
        let now = Instant::now();
        if now < stop {
            for p in ready.drain(..) {
                let f = format!(
                    "{{\"type\":\"send\",\"room\":\"{}\",\"text\":\"durable message {seq} of a typical length, about sixty bytes\",\"cid\":\"d{tag}-{seq}\"}}",
                    rooms[p]
                );
                seq += 1;
                pending[p].push_back(Instant::now());
                net.send(base + p, f.as_bytes());
            }
        } else {
            if cpu1.is_none() {
                cpu1 = Some(pid.and_then(cpu_ticks));
            }
            if pending.iter().all(VecDeque::is_empty) {
                break;
            }
        }
        net.pump(Duration::from_millis(2), |i, _, ev, at| {
            if i < base || i >= base + pubs {
                return;
            }
            let j = i - base;
            match ev {
                Ev::Text(p) => match frame_type(p) {
                    b"ack" => {
                        if let Some(sent) = pending[j].pop_front() {
                            lat.push(at.saturating_duration_since(sent).as_micros() as u32);
                            if sent < stop {
                                acked += 1;
                            }
                            if at < stop {
                                ready.push(j);
                            }
                        }
                    }
                    b"error" => errors += 1,
                    _ => {}
                },
                Ev::Closed(_) => closed += 1,
                Ev::Opened => {}
            }
        });
    }
    lat.sort_unstable();
    let cpu = match (cpu0, cpu1.flatten()) {
        (Some(a), Some(b)) => Some((b - a) as f64 / super::procs::ticks_per_sec() / secs * 100.0),
        _ => None,
    };
    Durable {
        acked,
        secs,
        per_sec: acked as f64 / secs,
        p50_ms: f64::from(quantile(&lat, 0.5)) / 1000.0,
        p99_ms: f64::from(quantile(&lat, 0.99)) / 1000.0,
        errors,
        closed,
        unacked: pending.iter().map(|p| p.len() as u64).sum(),
        server_cpu_pct: cpu,
    }
}
