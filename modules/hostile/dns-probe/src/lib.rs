//! Hostile: uses name lookups as a side channel. `resolve NAME...` asks
//! `wasi:sockets/ip-name-lookup` for each name (an exfiltration label,
//! `localhost`, `metadata.google.internal`, ...) and reports one line per
//! name; `flood N NAME` starts N lookups at once and holds them, to tie up
//! the host's resolver threads. Only names the policy lists may resolve.
use chassis_guest::{Agent, Error, export_agent};

struct DnsProbe;

impl Agent for DnsProbe {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let request = String::from_utf8_lossy(&input);
        let (op, rest) = request
            .trim()
            .split_once(' ')
            .unwrap_or((request.trim(), ""));
        match op {
            "resolve" => Ok(probe::resolve_each(rest)),
            "flood" => {
                let (count, name) = rest.split_once(' ').unwrap_or((rest, ""));
                let count = count
                    .parse()
                    .map_err(|_| Error::new("InvalidInput", format!("bad count `{count}`")))?;
                Ok(probe::flood(count, name.trim()))
            }
            other => Err(Error::new("InvalidInput", format!("unknown op `{other}`"))),
        }
    }
}

export_agent!(DnsProbe);
