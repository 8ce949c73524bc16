//! Hostile, command world: the `escape` agent's twin as a plain `fn main`.
//! Reads the request on stdin; prints the result, or the error code and
//! message on stderr and exits 1.
use std::io::{Read, Write};

fn main() {
    let mut request = String::new();
    std::io::stdin().read_to_string(&mut request).expect("reading stdin");
    match probe::act(&request) {
        Ok(out) => std::io::stdout().write_all(&out).expect("writing stdout"),
        Err((code, message)) => {
            eprintln!("{code}: {message}");
            std::process::exit(1);
        }
    }
}
