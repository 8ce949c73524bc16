//! The attacks the hostile `escape` guests try, shared by the agent and the
//! command twin so both make exactly the same system calls.
//!
//! A request is one line, `OP ARG [DATA]`:
//! - `read PATH`, `write PATH DATA`, `list PATH`: filesystem
//! - `env`: every environment variable the guest can see
//! - `connect HOST:PORT`: open a TCP connection, send a line, read a reply
//! - `get URL`: an HTTP GET through `wasi:http`
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
        "get" => http_get(arg),
        other => Err(("InvalidInput".into(), format!("unknown op `{other}`"))),
    }
}

fn http_get(url: &str) -> Outcome {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, OutgoingRequest, Scheme};

    let bad = |what: &str| ("InvalidInput".to_string(), format!("{what} in `{url}`"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let scheme = if scheme == "https" { Scheme::Https } else { Scheme::Http };
    request.set_scheme(Some(&scheme)).map_err(|_| bad("bad scheme"))?;
    request.set_authority(Some(authority)).map_err(|_| bad("bad authority"))?;
    request.set_path_with_query(Some(path)).map_err(|_| bad("bad path"))?;
    let code = |e: wasi::http::types::ErrorCode| {
        let name = format!("{e:?}");
        let bare = name.trim_start_matches("ErrorCode::");
        let short = bare.split(['(', ' ', '{']).next().unwrap_or(bare).to_string();
        (short, name)
    };
    let pending = outgoing_handler::handle(request, None).map_err(code)?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(code(e)),
        _ => return Err(("Other".into(), "the response future failed".into())),
    };
    let body = response.consume().map_err(|_| bad("no body"))?;
    let stream = body.stream().map_err(|_| bad("no body stream"))?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    Ok(out)
}
