//! A Redis for cluster tests and benchmarks: the machine's `redis-server` on a free loopback
//! port, its data in a temporary directory, `appendonly yes` and `appendfsync always` unless
//! told otherwise, pinned to a core if asked. Killed (SIGKILL) when dropped. Shared by the black-
//! box tests (tests/common), the library's unit tests (src/cluster) and benches/cluster.rs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const DURABLE: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

pub struct Redis {
    child: Child,
    pub port: u16,
    dir: TempDir,
    core: Option<usize>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(DURABLE)
    }

    pub fn start_with(settings: &[&str]) -> Redis {
        Redis::start_pinned(settings, None)
    }

    /// Starts one pinned to `core` (with `taskset`), when given.
    pub fn start_pinned(settings: &[&str], core: Option<usize>) -> Redis {
        let dir = TempDir::new().expect("tempdir");
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let mut child = launch(&dir, port, settings, core);
            if answers_ping(&mut child, port) {
                return Redis {
                    child,
                    port,
                    dir,
                    core,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start (install it: apt-get install redis-server)");
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then start again on the same port and data directory.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut child = launch(&self.dir, self.port, DURABLE, self.core);
            if answers_ping(&mut child, self.port) {
                self.child = child;
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "redis did not come back");
        }
    }

    /// SIGKILL, leaving it down.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn launch(dir: &TempDir, port: u16, settings: &[&str], core: Option<usize>) -> Child {
    let mut command = match core {
        Some(core) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", &core.to_string(), "redis-server"]);
            taskset
        }
        None => Command::new("redis-server"),
    };
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir.path())
        .args(settings)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (apt-get install redis-server)")
}

/// Polls until the server answers PING (false if it exited or the deadline passed).
fn answers_ping(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        let pong = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"PING\r\n")?;
            let mut reply = [0u8; 7];
            let n = s.read(&mut reply)?;
            Ok(reply[..n].starts_with(b"+PONG"))
        });
        if matches!(pong, Ok(true)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
