//! Hostile: writes 8 MiB (or as many MiB as its input says) to stdout and
//! stderr, then succeeds. The host must keep only its byte cap of each and
//! report the rest as dropped.
use chassis_guest::{Agent, Error, export_agent};
use std::io::Write;

struct Flood;

impl Agent for Flood {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mib: usize = std::str::from_utf8(&input)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(8);
        let line = [b'x'; 1023];
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        for _ in 0..mib * 1024 {
            out.write_all(&line).and_then(|_| out.write_all(b"\n"))
                .map_err(|e| Error::new("io", e.to_string()))?;
            err.write_all(&line).and_then(|_| err.write_all(b"\n"))
                .map_err(|e| Error::new("io", e.to_string()))?;
        }
        out.flush().map_err(|e| Error::new("io", e.to_string()))?;
        Ok(b"flooded".to_vec())
    }
}

export_agent!(Flood);
