//! The attacks the hostile `escape` guests try, shared by the agent and the
//! command twin so both make exactly the same system calls.
//!
//! A request is one line, `OP ARG [DATA]`:
//! - `read PATH`, `write PATH DATA`, `list PATH`: filesystem
//! - `env`: every environment variable the guest can see
//! - `connect HOST:PORT`: open a TCP connection, send a line, read a reply
//!
//! Success is the bytes read (or a short report); failure is the
//! `std::io::ErrorKind` name as a stable code plus the OS message.

use std::io::{Read, Write};

/// What an attack returned: output, or (code, message).
pub type Outcome = Result<Vec<u8>, (String, String)>;

fn io(e: std::io::Error) -> (String, String) {
    (format!("{:?}", e.kind()), e.to_string())
}

/// Runs one request.
pub fn act(request: &str) -> Outcome {
    let mut parts = request.trim().splitn(3, ' ');
    let op = parts.next().unwrap_or_default();
    let arg = parts.next().unwrap_or_default();
    let data = parts.next().unwrap_or_default();
    match op {
        "read" => std::fs::read(arg).map_err(io),
        "write" => std::fs::write(arg, data).map(|_| b"written".to_vec()).map_err(io),
        "list" => {
            let mut names: Vec<String> = std::fs::read_dir(arg)
                .map_err(io)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(names.join("\n").into_bytes())
        }
        "env" => {
            let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            vars.sort();
            Ok(vars.join("\n").into_bytes())
        }
        "connect" => {
            let mut stream = std::net::TcpStream::connect(arg).map_err(io)?;
            stream.write_all(b"hello from the guest\n").map_err(io)?;
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).map_err(io)?;
            Ok(reply)
        }
        other => Err(("InvalidInput".into(), format!("unknown op `{other}`"))),
    }
}
