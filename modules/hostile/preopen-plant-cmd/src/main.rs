//! Hostile, command world: the `preopen-plant` agent's twin. Reads `plant`
//! or `list` on stdin; prints the result, or the error code and message on
//! stderr and exits 1.
use std::io::{Read, Write};

fn main() {
    let mut request = String::new();
    std::io::stdin()
        .read_to_string(&mut request)
        .expect("reading stdin");
    let outcome = match request.trim() {
        "plant" => probe::plant("/work", "in", "../../../../../../.."),
        "list" => probe::act("list /in"),
        other => Err(("InvalidInput".into(), format!("unknown op `{other}`"))),
    };
    match outcome {
        Ok(out) => std::io::stdout().write_all(&out).expect("writing stdout"),
        Err((code, message)) => {
            eprintln!("{code}: {message}");
            std::process::exit(1);
        }
    }
}
