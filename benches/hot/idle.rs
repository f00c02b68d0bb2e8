//! Idle memory (issue 7 item 5): N connections, each a different account, authenticated and
//! joined (rooms of a bounded size), measured after a warm-up of W connections.

use std::time::Duration;

use super::net::Net;
use super::procs::Server;
use super::setup::{open_members, settle, Member};

#[derive(Clone, Debug, Default)]
pub struct Idle {
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub per_conn_kib: f64,
    pub open_secs: f64,
    pub settle_frames: u64,
}

/// Members for `n` accounts from `tokens[offset..]`, member k in room `idle-{k % rooms}`.
pub fn members(tokens: &[String], offset: usize, n: usize, rooms: usize) -> Vec<Member> {
    (0..n)
        .map(|k| Member {
            token: tokens[offset + k].clone(),
            rooms: vec![format!("idle-{}", (offset + k) % rooms.max(1))],
        })
        .collect()
}

/// Opens the warm-up, reads RSS, opens the measured connections, reads RSS again. The caller
/// keeps `net` (and so the connections) until after this returns.
pub fn measure(
    net: &mut Net,
    server: &Server,
    tokens: &[String],
    warm: usize,
    conns: usize,
    rooms: usize,
) -> Result<Idle, String> {
    let limit = Duration::from_secs(300);
    let quiet = Duration::from_millis(500);
    open_members(
        net,
        0,
        server.addr,
        &members(tokens, 0, warm, rooms),
        256,
        limit,
    )?;
    settle(net, quiet, limit);
    std::thread::sleep(Duration::from_millis(200));
    let before = server.rss_kib().ok_or("no RSS")?;
    let took = open_members(
        net,
        warm,
        server.addr,
        &members(tokens, warm, conns, rooms),
        256,
        limit,
    )?;
    let (frames, _) = settle(net, quiet, limit);
    std::thread::sleep(Duration::from_millis(200));
    let after = server.rss_kib().ok_or("no RSS")?;
    Ok(Idle {
        rss_before_kib: before,
        rss_after_kib: after,
        per_conn_kib: after.saturating_sub(before) as f64 / conns.max(1) as f64,
        open_secs: took.as_secs_f64(),
        settle_frames: frames,
    })
}
