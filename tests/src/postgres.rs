//! A throwaway PostgreSQL cluster for tests: `initdb` and `pg_ctl` in a
//! temporary directory, listening on a free loopback port with password
//! (cleartext) authentication, stopped and removed when dropped.
//!
//! The binaries come from Debian's `postgresql` package (found under
//! `/usr/lib/postgresql/<version>/bin`, or in `CHASSIS_PG_BIN`), which
//! `cargo xtask test` installs when it is missing. `initdb` and `postgres`
//! refuse to run as root, so as root they run as the `postgres` user the
//! package creates, with the directory handed to it.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::etcd::free_port;

/// The superuser the cluster is made with.
pub const SUPERUSER: &str = "postgres";

/// A running cluster; see the module docs.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    password: String,
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Makes and starts a cluster; a port taken between picking and binding
    /// is retried on another, up to three times.
    pub fn start() -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(pg) => return pg,
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start three times; the last failure: {last}");
    }

    fn try_start() -> Result<Self, String> {
        let bin = bin_dir();
        let as_postgres = is_root();
        let dir = tempfile::tempdir().expect("creating a temp dir for PostgreSQL");
        let password = format!("pg-admin-{}", std::process::id());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).expect("writing the pwfile");
        if as_postgres {
            let chowned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("running chown");
            assert!(chowned.success(), "chown postgres {}", dir.path().display());
        }
        let data = dir.path().join("data");
        let pg = Self {
            port: free_port(),
            password,
            bin,
            data,
            as_postgres,
            dir,
        };
        let out = pg.tool("initdb", |c| {
            c.arg("-D")
                .arg(&pg.data)
                .args(["-U", SUPERUSER, "-A", "password", "--no-sync", "--pwfile"])
                .arg(&pwfile);
        });
        if !out.status.success() {
            panic!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            pg.port,
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("postgres.log");
        let out = pg.tool("pg_ctl", |c| {
            c.arg("-D")
                .arg(&pg.data)
                .args(["-o", &options, "-l"])
                .arg(&log)
                .args(["-w", "-t", "60", "start"]);
        });
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start failed: {}{}; its log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        Ok(pg)
    }

    /// Runs a server tool from the bin dir, as `postgres` when we are root.
    fn tool(&self, name: &str, args: impl FnOnce(&mut Command)) -> Output {
        let program = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        args(&mut command);
        command
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Runs `sql` as `user` with `password` over TCP; the output
    /// (unaligned, tuples only) or psql's error.
    pub fn psql_as(&self, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-w", "-qtA", "-h", "127.0.0.1", "-d", "postgres"])
            .args(["-p", &self.port.to_string(), "-U", user, "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap_or_else(|e| panic!("running psql: {e}"));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Runs `sql` as the superuser; panics on an error.
    pub fn query(&self, sql: &str) -> String {
        self.psql_as(SUPERUSER, &self.password, sql)
            .unwrap_or_else(|e| panic!("psql `{sql}`: {e}"))
    }

    /// Whether `user` can log in with `password` right now.
    pub fn can_log_in(&self, user: &str, password: &str) -> Result<(), String> {
        self.psql_as(user, password, "SELECT 1").map(|_| ())
    }

    /// The login roles whose names start with `prefix`, sorted.
    pub fn roles_starting_with(&self, prefix: &str) -> Vec<String> {
        let out = self.query(&format!(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE '{prefix}%' ORDER BY rolname"
        ));
        out.lines().map(str::to_string).collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.tool("pg_ctl", |c| {
            c.arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "stop"]);
        });
    }
}

/// The directory holding `initdb`: `CHASSIS_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHASSIS_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server under /usr/lib/postgresql/<version>/bin: install Debian's \
             `postgresql` (`cargo xtask test` does this when it is missing) or set CHASSIS_PG_BIN"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}
