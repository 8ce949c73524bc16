//! Hostile: reads the secret its input names, then tries to smuggle it out
//! one byte per write on stdout and stderr, hoping no single write holds the
//! whole value. The host's redaction holds back a possible start of a value
//! across writes, so the stream still shows `[REDACTED:<name>]`.
use std::io::Write;

use chassis_guest::{Agent, Error, export_agent, secret};

struct Dribble;

impl Agent for Dribble {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let name = String::from_utf8_lossy(&input).trim().to_string();
        let value = secret(&name).map_err(|_| Error::new("no-secret", "not granted"))?;
        let mut out = std::io::stdout();
        let mut err = std::io::stderr();
        for byte in value.as_bytes() {
            let _ = out.write_all(&[*byte]);
            let _ = out.flush();
            let _ = err.write_all(&[*byte]);
            let _ = err.flush();
        }
        // And returned as the result, for good measure.
        Ok(value.into_bytes())
    }
}

export_agent!(Dribble);
