//! Hostile: makes the host copy as much as it can through host calls, which
//! cost the guest no fuel and live outside its linear memory.
//!
//! Input `log KIB CALLS`: builds one string of KIB KiB and logs it CALLS
//! times as the message and as a field's key and value (three copies per
//! call). Input `secret KIB CALLS`: asks CALLS times for an ungranted secret
//! whose name is KIB KiB long. Input `error KIB 1`: returns an error whose
//! code and message are KIB KiB long (it goes to the caller, the audit log
//! and the host's log). Returns `done` if the host lets it finish.
//!
//! The host copies at most 1 MiB out of the guest per call (a larger call
//! ends the run as `memory-limit`) and keeps only clipped copies within a
//! per-run budget, so the host's memory stays bounded either way.
use chassis_guest::{Agent, Error, export_agent, log, secret};

struct Bomb;

impl Agent for Bomb {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let text = String::from_utf8_lossy(&input);
        let mut words = text.split_whitespace();
        let (mode, kib, calls) = match (words.next(), words.next(), words.next()) {
            (Some(m), Some(k), Some(c)) => (
                m.to_string(),
                k.parse::<usize>().map_err(|_| Error::new("bad-input", "KIB"))?,
                c.parse::<usize>().map_err(|_| Error::new("bad-input", "CALLS"))?,
            ),
            _ => return Err(Error::new("bad-input", "log|secret KIB CALLS")),
        };
        let big = "x".repeat(kib * 1024);
        match mode.as_str() {
            "log" => {
                for _ in 0..calls {
                    log::info(&big, &[(&big, &big)]);
                }
            }
            "secret" => {
                for _ in 0..calls {
                    let _ = secret(&big);
                }
            }
            "error" => return Err(Error::new(big.clone(), big)),
            _ => return Err(Error::new("bad-input", "log|secret|error KIB CALLS")),
        }
        Ok(b"done".to_vec())
    }
}

export_agent!(Bomb);
