//! Storage micro-benchmark: the durable write path without sockets.
//!
//! (a) The sled ceiling: the records chatd writes for a chat message (120-byte text, 64 rooms, a
//!     cid entry each, room records read and rewritten once per room per batch), pre-encoded and
//!     written with raw sled the way the committer writes a batch of new messages (each message
//!     and its cid inserted in order, then each room record by compare-and-swap), one flush per
//!     batch as `Store::flush` does it (sled's flush, then `fdatasync` of sled's log), for
//!     batches of 1/8/64/512: that row is the ceiling. For comparison, the same
//!     records as one transaction per batch (how chatd writes a batch holding an edit or a
//!     delete) and as plain per-tree `apply_batch`.
//! (b) One raw fsync on the same disk: sled (insert 1 record + flush as in (a)), and `File::sync_data` on
//!     a temp file after appending 8 bytes (the file grows, so each sync also commits its size)
//!     and after overwriting 8 bytes in place in a file written out beforehand (the cheapest
//!     sync: data only, as for sled's preallocated log segments), p50/p99 µs.
//! (c) chatd's own path, `Committer::append` over `Store` (cid check, id, queue; commit thread
//!     apply + flush; delivery thread continuation): 64 rooms with 8 appends in flight each, strict
//!     and relaxed; and one appender in lock-step (one in flight), whose ack p50 compares with (b).
//!
//! Run: `cargo bench --bench storage` (about a minute), or `-- --smoke` (a second or two).
//! The data goes to a temp dir under $TMPDIR (set it to put the benchmark on another disk).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatd::store::commit::Committer;
use chatd::store::gate::WriteGate;
use chatd::store::{LogWrite, Message, RoomRef, Store, StoreOptions};
use sled::Transactional;

const ROOMS: usize = 64;
const TEXT: usize = 120;

struct Scale {
    /// Messages per ceiling run.
    ceiling_messages: usize,
    /// Samples per fsync figure.
    fsyncs: usize,
    /// Seconds per committer run.
    seconds: f64,
}

fn main() {
    run(std::env::args().any(|a| a == "--smoke"));
}

/// What one run measured, for the smoke test to check.
#[derive(Debug)]
pub struct Summary {
    /// sled's messages/s at each batch size, chatd's shape for new messages.
    pub ceiling: Vec<(usize, f64)>,
    /// Messages each committer run acknowledged.
    pub acknowledged: Vec<u64>,
}

/// Prints the three tables; `smoke` makes every part tiny.
pub fn run(smoke: bool) -> Summary {
    let scale = if smoke {
        Scale {
            ceiling_messages: 2_000,
            fsyncs: 20,
            seconds: 0.2,
        }
    } else {
        Scale {
            ceiling_messages: 40_000,
            fsyncs: 300,
            seconds: 6.0,
        }
    };
    println!(
        "storage: {ROOMS} rooms, {TEXT}-byte texts, a cid per message{}",
        if smoke { " (smoke run)" } else { "" }
    );

    println!("\n(a) sled ceiling: raw sled, one flush per batch");
    println!("| shape | batch | messages/s | µs/message |");
    println!("| --- | ---: | ---: | ---: |");
    let mut ceiling = Vec::new();
    for batch in [1, 8, 64, 512] {
        for shape in [Shape::Inserts, Shape::Transaction, Shape::ApplyBatch] {
            let n = match batch {
                1 => scale.ceiling_messages / 20,
                8 => scale.ceiling_messages / 4,
                _ => scale.ceiling_messages,
            };
            let rate = sled_ceiling(batch, n, shape);
            println!(
                "| {} | {batch} | {rate:.0} | {:.1} |",
                shape.name(),
                1e6 / rate
            );
            if shape == Shape::Inserts {
                ceiling.push((batch, rate));
            }
        }
    }

    println!("\n(b) one fsync on this disk");
    println!("| what | p50 µs | p99 µs |");
    println!("| --- | ---: | ---: |");
    let sled_fsync = sled_fsync(scale.fsyncs);
    println!(
        "| sled insert 1 record + flush | {} | {} |",
        percentile(&sled_fsync, 0.5),
        percentile(&sled_fsync, 0.99)
    );
    let file_fsync = file_fsync(scale.fsyncs);
    println!(
        "| file write 8 B + sync_data | {} | {} |",
        percentile(&file_fsync, 0.5),
        percentile(&file_fsync, 0.99)
    );
    let in_place_fsync = in_place_fsync(scale.fsyncs);
    println!(
        "| file overwrite 8 B in place + sync_data | {} | {} |",
        percentile(&in_place_fsync, 0.5),
        percentile(&in_place_fsync, 0.99)
    );

    println!("\n(c) chatd Store + Committer (append → apply + flush → continuation)");
    println!("| run | in flight | messages/s | avg batch | ack p50 µs | ack p99 µs | vs |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    let mut acknowledged = Vec::new();
    for (name, rooms, window, fsync) in [
        ("strict, 64 rooms", ROOMS, 8, true),
        ("relaxed, 64 rooms", ROOMS, 8, false),
        ("strict, lock-step", 1, 1, true),
    ] {
        let run = committer_run(rooms, window, fsync, scale.seconds);
        acknowledged.push(run.messages);
        let avg_batch = run.messages as f64 / run.flushes.max(1) as f64;
        let p50 = percentile(&run.latencies, 0.5);
        let vs = if !fsync {
            "no flush".into()
        } else if window == 1 {
            let fsync_p50 = percentile(&sled_fsync, 0.5).max(1);
            format!(
                "ack p50 = {:.2}× the sled fsync p50",
                p50 as f64 / fsync_p50 as f64
            )
        } else {
            let at = interpolate(&ceiling, avg_batch);
            format!(
                "{:.0} % of the ceiling at that batch size ({at:.0}/s)",
                100.0 * run.rate / at
            )
        };
        println!(
            "| {name} | {} | {:.0} | {} | {p50} | {} | {vs} |",
            rooms * window,
            run.rate,
            if fsync {
                format!("{avg_batch:.1}")
            } else {
                "-".into()
            },
            percentile(&run.latencies, 0.99),
        );
    }
    Summary {
        ceiling,
        acknowledged,
    }
}

fn percentile(samples: &[u64], p: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The ceiling's rate at a batch size between the measured ones (log-linear), clamped.
fn interpolate(points: &[(usize, f64)], batch: f64) -> f64 {
    let batch = batch.max(1.0);
    let mut previous = points[0];
    if batch <= previous.0 as f64 {
        return previous.1;
    }
    for &point in &points[1..] {
        if batch <= point.0 as f64 {
            let t = (batch.ln() - (previous.0 as f64).ln())
                / ((point.0 as f64).ln() - (previous.0 as f64).ln());
            return previous.1 + t * (point.1 - previous.1);
        }
        previous = point;
    }
    previous.1
}

fn temp_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("chatd-bench-{what}-"))
        .tempdir()
        .expect("a temp dir")
}

fn sled_db(dir: &std::path::Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
        .open()
        .expect("opening sled")
}

/// How a batch is written to sled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// chatd's group commit of new messages: each message and its cid inserted in order, then
    /// each room record by compare-and-swap.
    Inserts,
    /// chatd's group commit when it holds an edit or a delete: one transaction over the trees
    /// whose body does `apply_batch` per tree.
    Transaction,
    /// Per-tree `apply_batch`, no transaction (for comparison).
    ApplyBatch,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Inserts => "inserts (chatd)",
            Shape::Transaction => "transaction (chatd, edits)",
            Shape::ApplyBatch => "plain apply_batch",
        }
    }
}

/// Raw sled, chatd's records and batch shape: messages/s.
fn sled_ceiling(batch: usize, n: usize, shape: Shape) -> f64 {
    let dir = temp_dir("ceiling");
    let db = sled_db(dir.path());
    let open = |name: &str| db.open_tree(name).expect("a tree");
    let (messages, cids, rooms) = (open("messages"), open("cids"), open("rooms"));
    let log = sled_log(dir.path());
    // A room record is ~40 bytes in chatd (name, no, created, last_id, count).
    for r in 0..ROOMS {
        rooms
            .insert(format!("room{r:02}"), vec![0u8; 40])
            .expect("insert");
    }
    db.flush().expect("flush");
    let text = vec![b'x'; TEXT + 20]; // the message record: text + user + ts + cid + version
    let mut id = 1u64;
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let mut writes = Vec::with_capacity(batch);
        let mut touched = std::collections::BTreeMap::new();
        for _ in 0..batch {
            let room = (id % ROOMS as u64) as u32;
            let mut key = room.to_be_bytes().to_vec();
            key.extend_from_slice(&id.to_be_bytes());
            let cid = format!("user{room}\0cid-{id}").into_bytes();
            writes.push((key, cid));
            *touched.entry(room).or_insert(0u8) += 1;
            id += 1;
        }
        let bump = |old: Option<&sled::IVec>, n: u8| {
            let mut v = old.map(|v| v.to_vec()).unwrap_or_default();
            if let Some(b) = v.first_mut() {
                *b = b.wrapping_add(n);
            }
            v
        };
        let batches = || {
            let mut message_batch = sled::Batch::default();
            let mut cid_batch = sled::Batch::default();
            for (key, cid) in &writes {
                message_batch.insert(key.as_slice(), text.as_slice());
                cid_batch.insert(cid.as_slice(), &[1u8; 24][..]);
            }
            (message_batch, cid_batch)
        };
        match shape {
            Shape::Transaction => {
                let (message_batch, cid_batch) = batches();
                (&messages, &cids, &rooms)
                    .transaction(|(m, c, r)| {
                        for (room, n) in &touched {
                            let key = format!("room{room:02}");
                            let v = bump(r.get(key.as_bytes())?.as_ref(), *n);
                            r.insert(key.as_bytes(), v)?;
                        }
                        m.apply_batch(&message_batch)?;
                        c.apply_batch(&cid_batch)?;
                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .expect("transaction");
            }
            Shape::ApplyBatch => {
                let (message_batch, cid_batch) = batches();
                let mut room_batch = sled::Batch::default();
                for (room, n) in &touched {
                    let key = format!("room{room:02}");
                    let v = bump(rooms.get(key.as_bytes()).expect("get").as_ref(), *n);
                    room_batch.insert(key.into_bytes(), v);
                }
                messages.apply_batch(message_batch).expect("apply");
                cids.apply_batch(cid_batch).expect("apply");
                rooms.apply_batch(room_batch).expect("apply");
            }
            Shape::Inserts => {
                for (key, cid) in &writes {
                    messages.insert(key, text.as_slice()).expect("insert");
                    cids.insert(cid, &[1u8; 24][..]).expect("insert");
                }
                for (room, n) in &touched {
                    let key = format!("room{room:02}");
                    loop {
                        let old = rooms.get(key.as_bytes()).expect("get");
                        let new = bump(old.as_ref(), *n);
                        let swapped = rooms
                            .compare_and_swap(key.as_bytes(), old.as_ref(), Some(new))
                            .expect("compare_and_swap");
                        if swapped.is_ok() {
                            break;
                        }
                    }
                }
            }
        }
        durable_flush(&db, &log);
        done += batch;
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// sled's log file in `dir`, for [`durable_flush`].
fn sled_log(dir: &std::path::Path) -> std::fs::File {
    std::fs::File::open(dir.join("db")).expect("sled's log file")
}

/// A flush as chatd's `Store::flush` does it: sled's flush (`pwrite` + `sync_file_range`), then
/// `fdatasync` of sled's log, which commits the file's size and flushes the disk's write cache.
fn durable_flush(db: &sled::Db, log: &std::fs::File) {
    db.flush().expect("flush");
    log.sync_data().expect("sync_data");
}

fn sled_fsync(n: usize) -> Vec<u64> {
    let dir = temp_dir("fsync");
    let db = sled_db(dir.path());
    let log = sled_log(dir.path());
    (0..n)
        .map(|i| {
            let started = Instant::now();
            db.insert((i as u64).to_be_bytes(), vec![0u8; TEXT])
                .expect("insert");
            durable_flush(&db, &log);
            started.elapsed().as_micros() as u64
        })
        .collect()
}

fn file_fsync(n: usize) -> Vec<u64> {
    use std::io::Write;
    let dir = temp_dir("file");
    let mut file = std::fs::File::create(dir.path().join("f")).expect("a temp file");
    (0..n)
        .map(|i| {
            let started = Instant::now();
            file.write_all(&(i as u64).to_be_bytes()).expect("write");
            file.sync_data().expect("sync_data");
            started.elapsed().as_micros() as u64
        })
        .collect()
}

fn in_place_fsync(n: usize) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    const SIZE: usize = 1 << 20;
    let dir = temp_dir("in-place");
    let file = std::fs::File::create(dir.path().join("f")).expect("a temp file");
    file.write_all_at(&vec![0u8; SIZE], 0).expect("write");
    file.sync_all().expect("sync_all");
    (0..n)
        .map(|i| {
            let started = Instant::now();
            file.write_all_at(&(i as u64).to_be_bytes(), ((i * 8) % SIZE) as u64)
                .expect("write");
            file.sync_data().expect("sync_data");
            started.elapsed().as_micros() as u64
        })
        .collect()
}

struct Run {
    rate: f64,
    messages: u64,
    flushes: u64,
    latencies: Vec<u64>,
}

struct Driver {
    committer: Committer,
    /// One lock per room, as the hub's room lock: appends to a room are serialized.
    rooms: Vec<Mutex<RoomRef>>,
    text: String,
    stop: AtomicBool,
    measuring: AtomicBool,
    done: AtomicU64,
    outstanding: AtomicU64,
    seq: AtomicU64,
    latencies: Mutex<Vec<u64>>,
    /// The first refusal or failed write: it ends the run and is reported, not swallowed.
    failure: Mutex<Option<String>>,
}

impl Driver {
    fn fail(&self, what: String) {
        self.stop.store(true, Ordering::SeqCst);
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(what);
    }
}

/// Appends one message to room `r`; its continuation appends the next (a closed loop).
fn append(driver: &Arc<Driver>, r: usize) {
    if driver.stop.load(Ordering::Relaxed) {
        return;
    }
    let room = driver.rooms[r].lock().unwrap_or_else(|e| e.into_inner());
    let seq = driver.seq.fetch_add(1, Ordering::Relaxed);
    let user = format!("user{r}");
    let message = LogWrite::Message(Message::new(
        user.clone(),
        driver.text.clone(),
        seq,
        Some(format!("c{seq}")),
    ));
    let started = Instant::now();
    let next = driver.clone();
    driver.outstanding.fetch_add(1, Ordering::SeqCst);
    let queued = driver.committer.append(
        &room,
        &user,
        message,
        Box::new(move |_, result| {
            if let Err(e) = result {
                next.fail(format!("write failed: {e}"));
                next.outstanding.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            if next.measuring.load(Ordering::Relaxed) {
                next.done.fetch_add(1, Ordering::Relaxed);
                next.latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(started.elapsed().as_micros() as u64);
            }
            next.outstanding.fetch_sub(1, Ordering::SeqCst);
            append(&next, r);
        }),
    );
    drop(room);
    if let Err(e) = queued {
        driver.fail(format!("append refused: {e}"));
        driver.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

fn committer_run(rooms: usize, window: usize, fsync: bool, seconds: f64) -> Run {
    let dir = temp_dir("committer");
    let store = Arc::new(
        Store::open(
            dir.path(),
            &StoreOptions {
                background_flush: !fsync,
                ..StoreOptions::default()
            },
        )
        .expect("opening the store"),
    );
    let flushes = Arc::new(AtomicU64::new(0));
    let measuring_flushes = Arc::new(AtomicBool::new(false));
    let (counted, counting) = (flushes.clone(), measuring_flushes.clone());
    let committer = Committer::start(
        store.clone(),
        fsync,
        Box::new(move |_, _| {
            if counting.load(Ordering::Relaxed) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }),
        WriteGate::without_headroom(Duration::from_secs(3600)),
    );
    let refs = (0..rooms)
        .map(|r| {
            let record = store
                .ensure_room(&format!("room{r:02}"), 0)
                .expect("a room");
            Mutex::new(RoomRef {
                name: Arc::from(record.name.as_str()),
                no: record.no,
            })
        })
        .collect();
    let driver = Arc::new(Driver {
        committer,
        rooms: refs,
        text: "x".repeat(TEXT),
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        done: AtomicU64::new(0),
        outstanding: AtomicU64::new(0),
        seq: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
    });
    for r in 0..rooms {
        for _ in 0..window {
            append(&driver, r);
        }
    }
    // Warm up, then measure a window of wall time.
    std::thread::sleep(Duration::from_secs_f64((seconds / 5.0).min(1.0)));
    driver.measuring.store(true, Ordering::SeqCst);
    measuring_flushes.store(true, Ordering::SeqCst);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    driver.measuring.store(false, Ordering::SeqCst);
    measuring_flushes.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    driver.stop.store(true, Ordering::SeqCst);
    // Let what is in flight finish (bounded), then stop the threads.
    let deadline = Instant::now() + Duration::from_secs(30);
    while driver.outstanding.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let unanswered = driver.outstanding.load(Ordering::SeqCst);
    if unanswered > 0 {
        driver.fail(format!(
            "{unanswered} appends unanswered 30 s after the run"
        ));
    }
    driver
        .committer
        .shutdown(Duration::from_secs(60))
        .expect("the last group commit finishes");
    if let Some(failure) = driver
        .failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        panic!("storage bench, committer run ({rooms} rooms, {window} in flight, fsync {fsync}): {failure}");
    }
    let messages = driver.done.load(Ordering::SeqCst);
    let latencies =
        std::mem::take(&mut *driver.latencies.lock().unwrap_or_else(|e| e.into_inner()));
    Run {
        rate: messages as f64 / elapsed,
        messages,
        flushes: flushes.load(Ordering::SeqCst),
        latencies,
    }
}
