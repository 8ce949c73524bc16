//! Reads the secrets its input names and reports their lengths.
//!
//! The input is a list of names separated by spaces; `env:NAME` reads the
//! environment variable `NAME` instead (a grant with `env = "NAME"`). Each
//! value is also printed to stdout (in two writes), to stderr and in a log
//! record, as a careless agent might: the host must redact all three. The
//! output is `<name> <length>` per line, so the caller learns that the
//! secret arrived without learning it.
use std::io::Write;

use chassis_guest::{Agent, Error, SecretError, export_agent, log, secret};

struct SecretReader;

impl Agent for SecretReader {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let input = String::from_utf8(input)
            .map_err(|_| Error::new("bad-input", "the names must be UTF-8"))?;
        let mut report = String::new();
        for name in input.split_whitespace() {
            let value = match name.strip_prefix("env:") {
                Some(var) => std::env::var(var)
                    .map_err(|_| Error::new("no-env", format!("`{var}` is not set")))?,
                None => match secret(name) {
                    Ok(value) => value,
                    Err(SecretError::Denied(why)) => return Err(Error::new("denied", why)),
                    Err(SecretError::Unavailable(why)) => {
                        return Err(Error::new("unavailable", why));
                    }
                },
            };
            // Split the value across two writes to stdout.
            let half = value.len() / 2;
            let half = (0..=half).rev().find(|&i| value.is_char_boundary(i)).unwrap_or(0);
            let mut out = std::io::stdout();
            let _ = write!(out, "{name}={}", &value[..half]);
            let _ = out.flush();
            let _ = writeln!(out, "{}", &value[half..]);
            let _ = out.flush();
            eprintln!("read {name}: {value}");
            log::info("read a secret", &[("name", name), ("value", &value)]);
            report.push_str(&format!("{name} {}\n", value.len()));
        }
        Ok(report.into_bytes())
    }
}

export_agent!(SecretReader);
