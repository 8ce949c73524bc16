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
        "write" => std::fs::write(arg, data)
            .map(|_| b"written".to_vec())
            .map_err(io),
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
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    request
        .set_scheme(Some(&scheme))
        .map_err(|_| bad("bad scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|_| bad("bad authority"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|_| bad("bad path"))?;
    let code = |e: wasi::http::types::ErrorCode| {
        let name = format!("{e:?}");
        let bare = name.trim_start_matches("ErrorCode::");
        let short = bare
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or(bare)
            .to_string();
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

/// Replaces `name` in the preopen mounted at `preopen` with a symlink to
/// `target`: what a guest with `rw` does to redirect a root nested inside.
pub fn plant(preopen: &str, name: &str, target: &str) -> Outcome {
    let dirs = wasi::filesystem::preopens::get_directories();
    let (dir, _) = dirs
        .iter()
        .find(|(_, path)| path == preopen)
        .ok_or_else(|| ("NotFound".to_string(), format!("no preopen at {preopen}")))?;
    let fs = |e: wasi::filesystem::types::ErrorCode| (format!("{e:?}"), format!("{e:?}"));
    // The directory may hold files; std removes it whole.
    match std::fs::remove_dir_all(format!("{preopen}/{name}")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    dir.symlink_at(target, name).map_err(fs)?;
    Ok(format!("{preopen}/{name} -> {target}").into_bytes())
}

/// Resolves each name through `wasi:sockets/ip-name-lookup`; one line per
/// name: `NAME ADDR,ADDR...` or `NAME !error-code` (the WIT name).
pub fn resolve_each(names: &str) -> Vec<u8> {
    let network = wasi::sockets::instance_network::instance_network();
    let mut lines = Vec::new();
    for name in names.split_whitespace() {
        let line = match resolve(&network, name) {
            Ok(addrs) => format!("{name} {}", addrs.join(",")),
            Err(code) => format!("{name} !{code}"),
        };
        lines.push(line);
    }
    lines.join("\n").into_bytes()
}

fn error_code(e: wasi::sockets::network::ErrorCode) -> String {
    e.name().to_string()
}

fn resolve(network: &wasi::sockets::network::Network, name: &str) -> Result<Vec<String>, String> {
    use wasi::sockets::network::{ErrorCode, IpAddress};
    let stream =
        wasi::sockets::ip_name_lookup::resolve_addresses(network, name).map_err(error_code)?;
    let mut addrs = Vec::new();
    loop {
        match stream.resolve_next_address() {
            Ok(Some(IpAddress::Ipv4((a, b, c, d)))) => {
                addrs.push(std::net::Ipv4Addr::new(a, b, c, d).to_string())
            }
            Ok(Some(IpAddress::Ipv6((a, b, c, d, e, f, g, h)))) => {
                addrs.push(std::net::Ipv6Addr::new(a, b, c, d, e, f, g, h).to_string())
            }
            Ok(None) => return Ok(addrs),
            Err(ErrorCode::WouldBlock) => stream.subscribe().block(),
            Err(e) => return Err(error_code(e)),
        }
    }
}

/// Starts `count` lookups of `name` at once without waiting for any:
/// `started N refused M CODE...` (the distinct codes of the refusals).
pub fn flood(count: usize, name: &str) -> Vec<u8> {
    let network = wasi::sockets::instance_network::instance_network();
    let mut held = Vec::new();
    let mut codes: Vec<String> = Vec::new();
    let mut refused = 0;
    for _ in 0..count {
        match wasi::sockets::ip_name_lookup::resolve_addresses(&network, name) {
            Ok(stream) => held.push(stream),
            Err(e) => {
                refused += 1;
                let code = error_code(e);
                if !codes.contains(&code) {
                    codes.push(code);
                }
            }
        }
    }
    format!(
        "started {} refused {refused} {}",
        held.len(),
        codes.join(",")
    )
    .into_bytes()
}
