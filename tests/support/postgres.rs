//! A real PostgreSQL for the tests of the central store (SPEC §6.3): `initdb` into a temporary
//! directory, `pg_ctl start` on a free port of 127.0.0.1 (password authentication over TCP, so a
//! URL carries a real secret), stopped with `pg_ctl stop -m immediate` when dropped. The server
//! refuses to run as root, and CI runs as root: then every command runs as the `postgres` system
//! user (`runuser -u postgres --`), on a directory that user owns.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser's password: scanned for in outputs, it must never appear.
pub const PG_PASSWORD: &str = "pg-Secret-Passw0rd-9876";

/// A running PostgreSQL server.
pub struct PgServer {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    as_postgres: bool,
    running: bool,
}

/// The `bin` directory of the newest PostgreSQL installed the Debian way.
fn binaries() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgServer {
    /// Starts one. Without PostgreSQL the test cannot run: under `CI=true` that fails it (CI
    /// installs it), elsewhere it is skipped with the reason printed (`None`).
    pub fn start() -> Option<PgServer> {
        let Some(bin) = binaries() else {
            super::tools::missing(
                "PostgreSQL (/usr/lib/postgresql/*/bin/initdb)",
                "apt-get install postgresql; .ci/run does",
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = is_root();
        std::fs::write(dir.path().join("pw"), PG_PASSWORD).unwrap();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of the PostgreSQL directory failed");
        }
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut server = PgServer {
            port,
            bin,
            dir,
            as_postgres,
            running: false,
        };
        let data = server.data();
        let pwfile = format!("--pwfile={}", server.dir.path().join("pw").display());
        server.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                &pwfile,
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        server.start_again();
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of the server's programs (as `postgres` when the tests run as root).
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts the server (again) on its port, with its data, and waits until it takes
    /// connections.
    pub fn start_again(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let data = self.data();
        let log = self.dir.path().join("log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop(&mut self) {
        if self.running {
            let data = self.data();
            self.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
            self.running = false;
        }
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// A connection of the test's own, driven on the current runtime.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// The directory of its files (for `Path` helpers).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let path = self.bin.join("pg_ctl");
            let mut command = if self.as_postgres {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(&path);
                command
            } else {
                Command::new(&path)
            };
            let _ = command
                .args([
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
