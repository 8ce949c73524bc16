//! Real `etcd` servers for tests: one member or a cluster on loopback, on
//! free ports, in a temporary data directory, stopped (and the directory
//! removed) when dropped.
//!
//! The `etcd` binary comes from Debian's `etcd-server` package, which
//! `cargo xtask test` installs when it is missing.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (the usual bind-then-release race is acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// One etcd member process.
#[derive(Debug)]
pub struct Member {
    /// Its name in the cluster.
    pub name: String,
    /// Client URL, `http://127.0.0.1:<port>`.
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    initial_cluster: String,
    token: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("creating the etcd log file");
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&self.client_url)
            .arg("--advertise-client-urls")
            .arg(&self.client_url)
            .arg("--listen-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            // Short elections: faster start-up and failover, and leases as
            // short as one second (etcd's floor is 1.5 election timeouts).
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting `etcd` failed ({e}). Install Debian's etcd-server \
                     (`cargo xtask test` does this when it is missing)."
                )
            });
        self.child = Some(child);
    }

    /// The client endpoint as `host:port`.
    pub fn endpoint(&self) -> String {
        self.client_url.trim_start_matches("http://").to_string()
    }

    /// Kills the member with SIGKILL (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again on the same data dir and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.spawn();
        wait_for_port(&self.endpoint(), &self.log).unwrap_or_else(|e| panic!("{e}"));
        wait_for_leader(&self.endpoint(), &self.log);
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for the member to listen; `Err` with its log if it did not.
fn wait_for_port(endpoint: &str, log: &std::path::Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(endpoint).is_err() {
        if Instant::now() >= deadline {
            return Err(format!(
                "etcd did not listen on {endpoint} within 20 s; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until the member's `/health` says the cluster has a leader.
fn wait_for_leader(endpoint: &str, log: &std::path::Path) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let healthy = TcpStream::connect(endpoint)
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                write!(s, "GET /health HTTP/1.0\r\nHost: {endpoint}\r\n\r\n")?;
                let mut body = String::new();
                s.read_to_string(&mut body)?;
                Ok(body.contains("\"health\":\"true\""))
            })
            .unwrap_or(false);
        if healthy {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "etcd at {endpoint} had no leader within 30 s; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A cluster of etcd members on loopback.
#[derive(Debug)]
pub struct Etcd {
    /// The members, in start order.
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// One member.
    pub fn start() -> Self {
        Self::cluster(1)
    }

    /// `n` members forming one cluster; returns once every member listens
    /// and the cluster has a leader. Free ports are picked, released and
    /// then bound by etcd, so another process may take one in between: a
    /// cluster that does not come up is started again on new ports.
    pub fn cluster(n: usize) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_cluster(n) {
                Ok(etcd) => return etcd,
                Err(e) => last = e,
            }
        }
        panic!("etcd did not start three times; the last failure: {last}");
    }

    fn try_cluster(n: usize) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("creating a temp dir for etcd");
        let mut token = [0u8; 6];
        unique_bytes(&mut token);
        let token = format!(
            "chassis-test-{}",
            token.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        // Hold every listener until all ports are picked, so no two are equal.
        let held: Vec<TcpListener> = (0..2 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral loopback port"))
            .collect();
        let picked: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().expect("a bound address").port())
            .collect();
        drop(held);
        let ports: Vec<(u16, u16)> = picked.chunks(2).map(|p| (p[0], p[1])).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Member> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{client}"),
                peer_url: format!("http://127.0.0.1:{peer}"),
                data_dir: dir.path().join(format!("m{i}")),
                initial_cluster: initial_cluster.clone(),
                token: token.clone(),
                child: None,
                log: dir.path().join(format!("m{i}.log")),
            })
            .collect();
        for m in &mut members {
            m.spawn();
        }
        for m in &members {
            wait_for_port(&m.endpoint(), &m.log)?;
        }
        for m in &members {
            wait_for_leader(&m.endpoint(), &m.log);
        }
        Ok(Self { members, _dir: dir })
    }

    /// Every member's client endpoint (`host:port`).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// A member's log so far, for failure messages.
    pub fn log(&self, member: usize) -> String {
        std::fs::read_to_string(&self.members[member].log).unwrap_or_default()
    }
}

fn unique_bytes(bytes: &mut [u8]) {
    // Enough uniqueness for a cluster token: time and pid.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        ^ u128::from(std::process::id());
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (seed >> (i * 8)) as u8;
    }
}
