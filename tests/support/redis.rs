//! A real `redis-server` for the tests of several replicas (SPEC §11): started on a free port of
//! 127.0.0.1 in a temporary directory, without persistence, and stopped (killed) when dropped.
//! Fault tests stop it (`SIGSTOP`), resume it (`SIGCONT`), and kill and restart it empty.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
    binary: PathBuf,
}

/// `redis-server` on the `PATH`, if any.
fn binary() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|path| path.is_file())
    })
}

impl RedisServer {
    /// Starts one. Without `redis-server` the test cannot run: under `CI=true` that fails it
    /// (CI installs Redis), elsewhere it is skipped with the reason printed (`None`).
    pub fn start() -> Option<RedisServer> {
        let Some(binary) = binary() else {
            super::tools::missing("redis-server", "apt-get install redis-server; .ci/run does");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let child = spawn(&binary, port, &dir);
        let server = RedisServer {
            port,
            child,
            _dir: dir,
            binary,
        };
        server.wait_until_it_answers();
        Some(server)
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Freezes it (`SIGSTOP`): connections stay open and nothing answers.
    pub fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    /// Thaws it (`SIGCONT`).
    pub fn resume(&self) {
        signal(self.child.id(), "CONT");
    }

    /// Kills it (`SIGKILL`) and starts a new, empty one on the same port: every key and every
    /// loaded script is gone.
    pub fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.binary, self.port, &self._dir);
        self.wait_until_it_answers();
    }

    /// Sends one command in Redis's inline form and reads the first reply line.
    pub fn command(&self, line: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut reply = vec![0u8; 4096];
        let n = stream.read(&mut reply).unwrap_or(0);
        String::from_utf8_lossy(&reply[..n]).into_owned()
    }

    fn wait_until_it_answers(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut reply = [0u8; 7];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn spawn(binary: &PathBuf, port: u16, dir: &tempfile::TempDir) -> Child {
    Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A frozen server is thawed first, to die promptly.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
