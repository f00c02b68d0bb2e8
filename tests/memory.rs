//! Memory that must stay bounded however many people log in.

mod common;

use common::TestServer;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("reading /proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// argon2 needs 19 MiB per hash. Allocating it per hash let glibc keep an arena of that size
/// for every thread that ever hashed: 20 registrations grew a server from 6 MB to 376 MB.
/// Hashing threads now reuse one buffer each, so logins cost at most threads × 19 MiB.
#[test]
fn logins_do_not_grow_memory_beyond_the_hashing_buffers() {
    let server = TestServer::start(&["--threads", "2"]);
    let before = rss_kib(server.pid());
    for i in 0..20 {
        drop(server.register(&format!("user{i}")));
    }
    for i in 0..20 {
        drop(server.login(&format!("user{i}"), common::PASSWORD));
    }
    let grown_mib = rss_kib(server.pid()).saturating_sub(before) / 1024;
    // Two hashing threads (one per core on CI machines) × 19 MiB, plus slack for the rest.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let budget = cores * 19 + 40;
    assert!(
        grown_mib <= budget,
        "40 logins grew the server by {grown_mib} MiB (budget {budget} MiB)"
    );
}
