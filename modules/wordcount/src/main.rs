//! A plain WASI command (no SDK): counts lines, words and bytes on stdin,
//! like `wc`. Exits 2 when stdin is not UTF-8.
use std::io::{Read, Write};

fn main() {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).expect("reading stdin");
    let Ok(text) = String::from_utf8(input) else {
        eprintln!("wordcount: input is not UTF-8");
        std::process::exit(2);
    };
    let lines = text.lines().count();
    let words = text.split_whitespace().count();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{lines} {words} {}", text.len()).expect("writing stdout");
}
