//! A short run of benches/cluster.rs (nodes + Redis against one chatd) at tiny size, so it cannot
//! rot: every delivery and ack arrived on both sides. No timing assertions. Needs redis-server.

#[path = "../benches/cluster.rs"]
#[allow(dead_code)] // the bench's own `main` is not called here
mod cluster;

#[test]
fn cluster_bench_delivers_and_acks_everything_on_nodes_and_one_server() {
    let summary = cluster::run(&cluster::Options {
        members: 12,
        nodes: 2,
        pubs: 3,
        secs: 0.3,
        runs: 1,
        pin: cluster::hot::procs::Pinning::NONE,
    });
    assert!(!summary.incomplete, "every delivery and ack arrived");
    for side in 0..2 {
        let w = &summary.fan[side][0];
        assert_eq!((w.delivered, w.disorder), (w.expected, 0), "{w:?}");
        assert!(summary.saturated[side][0].complete);
        assert!(summary.durable[side][0].acked > 0);
    }
}
