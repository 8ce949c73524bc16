//! Hostile (command): creates TCP sockets and keeps every one until the host
//! refuses, up to the count on stdin (default 100,000). Each is a file
//! descriptor of the host process; the host caps them per run. Prints how
//! many it got and the error that stopped it.
use std::io::Read;

use wasi::sockets::network::IpAddressFamily;
use wasi::sockets::tcp_create_socket::create_tcp_socket;

fn main() {
    let mut input = String::new();
    let _ = std::io::stdin().read_to_string(&mut input);
    let count: usize = input.trim().parse().unwrap_or(100_000);
    let mut kept = Vec::new();
    let mut stopped = String::from("none");
    for _ in 0..count {
        match create_tcp_socket(IpAddressFamily::Ipv4) {
            Ok(socket) => kept.push(socket),
            Err(e) => {
                stopped = e.name().to_string();
                break;
            }
        }
    }
    println!("created {} sockets, stopped by {stopped}", kept.len());
}
