//! A Redis server of a test's own: `redis-server` from the machine, on a free loopback port,
//! with its data directory in a temporary directory, configured as cluster mode requires
//! (append-only file, fsync on every write). Killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started Redis gets to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A running `redis-server`.
pub(crate) struct TestRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// Starts one with `appendonly yes` and `appendfsync always`.
    pub(crate) fn start() -> TestRedis {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// Starts one with these settings on top of the port, address and data directory.
    pub(crate) fn start_with(settings: &[&str]) -> TestRedis {
        let dir = tempfile::tempdir().expect("temporary directory for redis");
        // A port can be taken between our probe and Redis binding it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(dir.path(), port, settings);
            if wait_listening(&mut child, port) {
                return TestRedis { child, port, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start (is it installed? .ci/run installs it)");
    }

    /// The URL chatd takes in `--cluster`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL and starts it again on the same port and data directory.
    pub(crate) fn kill_and_restart(&mut self, settings: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let mut child = spawn(self.dir.path(), self.port, settings);
            if wait_listening(&mut child, self.port) {
                self.child = child;
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "redis did not restart on its port"
            );
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn spawn(dir: &Path, port: u16, settings: &[&str]) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .args(settings)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (is it installed? .ci/run installs it)")
}

/// Whether Redis answers a PING on `port` before the deadline (false if it exited first).
fn wait_listening(child: &mut Child, port: u16) -> bool {
    use std::io::{Read, Write};
    let deadline = Instant::now() + START_DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut reply = [0u8; 16];
            if s.write_all(b"PING\r\n").is_ok() {
                if let Ok(n) = s.read(&mut reply) {
                    if reply[..n].starts_with(b"+PONG") {
                        return true;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
