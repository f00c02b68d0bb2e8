//! Server processes under measurement (chatd, the Node `ws` peer, the floor), CPU pinning, CPU
//! time and memory from /proc, and accounts created through `chatd admin import`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where processes run: servers on `server_core`, the generator on `gen_core` (None: no pinning).
#[derive(Clone, Copy, Debug)]
pub struct Pinning {
    pub server_core: Option<usize>,
    pub gen_core: Option<usize>,
}

impl Pinning {
    pub const NONE: Pinning = Pinning {
        server_core: None,
        gen_core: None,
    };
    /// Servers on core 0, generator on core 1, if the machine has two cores.
    pub fn standard() -> Pinning {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores >= 2 {
            Pinning {
                server_core: Some(0),
                gen_core: Some(1),
            }
        } else {
            Pinning::NONE
        }
    }
}

fn set_affinity(pid: i32, core: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Pins the calling thread (call it in `main` before any thread starts) to `core`.
pub fn pin_self(core: Option<usize>) {
    if let Some(core) = core {
        if let Err(e) = set_affinity(0, core) {
            eprintln!("could not pin the generator to core {core}: {e}");
        }
    }
}

fn pinned(program: impl AsRef<std::ffi::OsStr>, core: Option<usize>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(core) = core {
        // SAFETY: only sched_setaffinity (async-signal-safe) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || set_affinity(0, core));
        }
    }
    cmd
}

/// A server under measurement; killed on drop.
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    /// The process to read CPU time and memory from (None for an in-process floor).
    pub pid: Option<u32>,
    child: Option<Child>,
    _stdout: Option<BufReader<ChildStdout>>,
    stop: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some((flag, thread)) = self.stop.take() {
            flag.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

impl Server {
    /// SIGTERM and wait (at most `limit`) for the process to exit; true if it exited.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let Some(child) = &mut self.child else {
            return false;
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    pub fn cpu_ticks(&self) -> Option<u64> {
        self.pid.and_then(cpu_ticks)
    }

    pub fn rss_kib(&self) -> Option<u64> {
        self.pid.and_then(rss_kib)
    }
}

/// Stops (SIGSTOP) the processes of every server but `active` until dropped (SIGCONT), so a
/// window has the server core to itself: between its own windows the Node peer is not idle (its
/// garbage collector and compiler threads ran up to 15 ms at a time on the server core during
/// chatd's windows, `perf sched timehist`, 2026-12-03).
pub fn quiet_others(servers: &[Server], active: usize) -> Quiet {
    let stopped: Vec<i32> = servers
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != active)
        .filter_map(|(_, s)| s.child.as_ref().map(|c| c.id() as i32))
        .collect();
    for pid in &stopped {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    Quiet(stopped)
}

/// The servers [`quiet_others`] stopped; continued on drop.
pub struct Quiet(Vec<i32>);

impl Drop for Quiet {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
    }
}

fn wait_listening(name: &str, mut child: Child) -> Server {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .expect("reading the server's first line");
    let Some(addr) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        panic!("{name} printed {line:?} instead of `listening on ADDR`");
    };
    Server {
        name: name.into(),
        addr: addr.parse().expect("address"),
        pid: Some(child.id()),
        child: Some(child),
        _stdout: Some(reader),
        stop: None,
    }
}

/// Path of the chatd binary (set by Cargo for benches and integration tests).
pub fn chatd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chatd"))
}

/// The load generator opens thousands of connections from a few loopback addresses, often for
/// one account: lift the per-address and per-account limits a real deployment wants.
pub const LOAD_GENERATOR_LIMITS: [&str; 8] = [
    "--max-connections-per-ip",
    "1000000",
    "--max-unauthenticated-per-ip",
    "1000000",
    "--max-connections-per-account",
    "1000000",
    "--reserved-connections",
    "0",
];

/// Flags that lift chatd's limits per client address and per account for benchmarks.
pub const LIFT_ABUSE_LIMITS: &[&str] = &[
    "--registrations-per-ip",
    "0",
    "--hash-jobs-per-ip",
    "0",
    "--account-quota-mb",
    "0",
];

/// Starts `chatd serve` on `listen` with `data_dir`, pinned as asked.
pub fn start_chatd(
    name: &str,
    data_dir: &Path,
    listen: &str,
    extra: &[&str],
    core: Option<usize>,
) -> Server {
    let child = pinned(chatd_bin(), core)
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        // Every bench client comes from 127.0.0.1 and one account may send for hours: lift the
        // limits per address and the daily quota (so a bench must not pass these flags itself).
        .args(LIFT_ABUSE_LIMITS)
        .args(LOAD_GENERATOR_LIMITS)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chatd");
    wait_listening(name, child)
}

/// Directory of the Node peer.
pub fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer")
}

/// Starts the Node `ws` peer, installing `ws` with npm if missing (unless `install` is false).
/// None if node or ws is unavailable.
pub fn start_peer(core: Option<usize>, install: bool) -> Option<Server> {
    let dir = peer_dir();
    if !dir.join("node_modules/ws").exists() {
        if !install {
            eprintln!("skipping the Node peer: benches/peer/node_modules/ws is missing");
            return None;
        }
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status();
        if !matches!(ok, Ok(s) if s.success()) {
            eprintln!("skipping the Node peer: `npm install` failed");
            return None;
        }
    }
    let child = pinned("node", core)
        .arg(dir.join("server.mjs"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(wait_listening("node ws", child))
}

/// Starts the floor as a process: this very executable, re-run with `--serve-floor` (each bench
/// that uses the floor checks for that flag first in `main`). With `journal`, the durable floor,
/// its journal created at that path.
pub fn start_floor_process(core: Option<usize>, journal: Option<&Path>) -> Server {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = pinned(exe, core);
    cmd.arg("--serve-floor");
    if let Some(path) = journal {
        cmd.arg("--floor-journal").arg(path);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the floor");
    wait_listening(
        if journal.is_some() {
            "durable floor"
        } else {
            "floor"
        },
        child,
    )
}

/// Starts the floor on a thread of this process (for tests: no CPU figures); with `journal`, the
/// durable floor.
pub fn start_floor_thread(journal: Option<std::fs::File>) -> Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let flag = Arc::new(AtomicBool::new(false));
    let f2 = flag.clone();
    let name = if journal.is_some() {
        "durable floor"
    } else {
        "floor"
    };
    let thread = std::thread::spawn(move || super::floor::serve(listener, &f2, journal));
    Server {
        name: name.into(),
        addr,
        pid: None,
        child: None,
        _stdout: None,
        stop: Some((flag, thread)),
    }
}

/// The `--serve-floor` entry point: serves until killed; `--floor-journal PATH` makes it the
/// durable floor.
pub fn serve_floor_main() -> ! {
    let args: Vec<String> = std::env::args().collect();
    let journal = args
        .iter()
        .position(|a| a == "--floor-journal")
        .and_then(|i| args.get(i + 1))
        .map(|path| {
            super::floor::open_journal(Path::new(path)).expect("creating the floor's journal")
        });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    let _ = std::io::stdout().flush();
    super::floor::serve(listener, &AtomicBool::new(false), journal);
    std::process::exit(0)
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second.
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time of this process (the generator), in ticks.
pub fn self_ticks() -> u64 {
    cpu_ticks(std::process::id()).unwrap_or(0)
}

/// Resident memory in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Accounts `{prefix}{i}` with session tokens, created in `data_dir` before the server starts
/// with `chatd admin import` (an export with secrets: users and sessions). No password hashing
/// is involved, so 10,000 accounts take a second instead of 10,000 argon2 hashes. The accounts
/// have no usable password; they log in by token (PROTOCOL.md's resume). Returns the tokens.
pub fn import_accounts(data_dir: &Path, prefix: &str, n: usize) -> Vec<String> {
    import_accounts_into(data_dir, None, prefix, n)
}

/// [`import_accounts`] into a cluster's Redis (`chatd admin import --cluster URL`) when
/// `cluster` is given.
pub fn import_accounts_into(
    data_dir: &Path,
    cluster: Option<&str>,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    use sha2::Digest;
    let now = now_ms();
    let mut seed = [0u8; 16];
    getrandom::fill(&mut seed).expect("OS random");
    let seed: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let mut text = format!(
        "{{\"type\":\"header\",\"format\":\"chatd-export\",\"version\":1,\"exported_ms\":{now},\"id_floor\":0}}\n"
    );
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix}{i}");
        let token = format!("bench-{seed}-{i}");
        let hash: String = sha2::Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        text.push_str(&format!(
            "{{\"type\":\"user\",\"name\":\"{name}\",\"created_ms\":{now},\"banned\":false,\"token_epoch\":0}}\n\
             {{\"type\":\"session\",\"token_sha256\":\"{hash}\",\"user\":\"{}\",\"created_ms\":{now},\"expires_ms\":{},\"epoch\":0}}\n",
            name.to_ascii_lowercase(),
            now + 7 * 86_400_000
        ));
        tokens.push(token);
    }
    let file = data_dir.join("bench-accounts.jsonl");
    std::fs::write(&file, text).expect("writing the import file");
    let mut import = Command::new(chatd_bin());
    import
        .args(["admin", "import", "--json", "--data-dir"])
        .arg(data_dir)
        .arg(&file);
    if let Some(url) = cluster {
        import.args(["--cluster", url]);
    }
    let out = import.output().expect("running chatd admin import");
    assert!(
        out.status.success(),
        "chatd admin import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&file);
    tokens
}

/// The pid of `ksoftirqd/CORE`: softirq work the kernel defers to it (under a high packet rate,
/// loopback receive processing) runs on the server's core but is charged to no server.
pub fn ksoftirqd(core: Option<usize>) -> Option<u32> {
    let want = format!("ksoftirqd/{}", core?);
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == want).then_some(pid)
    })
}
