//! `chassis serve` as a child process, configured by a generated YAML file,
//! with a gRPC client (`chassis client`) and a `/metrics` scraper.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::assert_success;

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `chassis serve`, killed on drop.
pub struct Served {
    pub child: Child,
    /// The gRPC address it printed (`host:port`).
    pub addr: String,
    /// The loopback port of `/metrics`.
    pub metrics_port: u16,
    /// Holds the config file and `data/` (the data dir).
    pub dir: tempfile::TempDir,
}

impl Served {
    /// Starts the binary with metrics on a free loopback port, gRPC on an
    /// ephemeral loopback port, JSON logs on stderr and a data dir in a
    /// temp dir. `extra_yaml` is inserted right after `server.listen`, so
    /// lines indented by four spaces are more `server` keys and lines
    /// indented by two start other `chassis` blocks.
    pub fn start(extra_yaml: &str) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), extra_yaml)
    }

    /// Like [`start`](Self::start), in `dir` (a restart keeps its data dir).
    pub fn start_in(dir: tempfile::TempDir, extra_yaml: &str) -> Self {
        match Self::try_start_in(dir, extra_yaml) {
            Ok(served) => served,
            Err((_, out)) => panic!(
                "chassis serve exited {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Starts the binary in `dir`; when it exits instead of listening,
    /// returns the dir and its output.
    pub fn try_start_in(
        dir: tempfile::TempDir,
        extra_yaml: &str,
    ) -> Result<Self, (tempfile::TempDir, std::process::Output)> {
        let metrics_port = free_port();
        let config = dir.path().join("chassis.yaml");
        std::fs::write(
            &config,
            format!(
                "chassis:\n  metrics:\n    enabled: true\n    port: {metrics_port}\n  logging:\n    level: INFO\n    format: json\n    output: stderr\n  server:\n    listen: 127.0.0.1:0\n{extra_yaml}  data_dir: {}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line.trim().strip_prefix("chassis listening on ") else {
            let out = child.wait_with_output().unwrap();
            return Err((dir, out));
        };
        let addr = addr.to_string();
        Ok(Self {
            child,
            addr,
            metrics_port,
            dir,
        })
    }

    /// Stops it with SIGTERM and waits for a clean exit; returns its dir.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.sigterm();
        let status = self.child.wait().unwrap();
        if !status.success() {
            let mut err = String::new();
            let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("chassis serve exited {status}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// The server's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `chassis client --addr <this server> ARGS`.
    pub fn client(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_chassis"))
            .arg("client")
            .arg("--addr")
            .arg(format!("http://{}", self.addr))
            .args(args)
            .output()
            .unwrap()
    }

    /// Registers a module over gRPC; returns its id.
    pub fn register(&self, path: &str) -> String {
        let out = self.client(&["register", path]);
        assert_success(&out);
        String::from_utf8_lossy(&out.stdout)
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    }

    /// The raw HTTP response of `GET /metrics`.
    pub fn scrape(&self) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        body
    }

    /// Scrapes until `done` holds for the text (at most 50 times, 100 ms
    /// apart: the exporter is read by another thread), returning the last.
    pub fn scrape_until(&self, done: impl Fn(&str) -> bool) -> String {
        let mut text = self.scrape();
        for _ in 0..50 {
            if done(&text) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            text = self.scrape();
        }
        text
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses Prometheus text into (series, value) pairs.
pub fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| {
            !l.starts_with('#')
                && !l.trim().is_empty()
                && !l.starts_with("HTTP/")
                && l.contains(' ')
        })
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}
