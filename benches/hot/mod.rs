//! Issue 7's hot-path benchmarks: a lean one-thread load generator (`net`), the floor server
//! (`floor`), server processes and /proc readings (`procs`), client setup and statistics
//! (`setup`), and the scenarios (`fanout` for fan-out and saturation, `durable`, `idle`,
//! `storm`). The bench programs (benches/fanout.rs, …) and tests/bench_smoke.rs include this
//! module with `#[path]`.

#![allow(dead_code)] // each program uses a different part

pub mod durable;
pub mod fanout;
pub mod floor;
pub mod idle;
pub mod net;
pub mod procs;
pub mod setup;
pub mod storm;
