//! Hostile: panics (a wasm `unreachable` trap). Must end in `trap` with a
//! wasm backtrace.
use chassis_guest::{Agent, Error, export_agent};

struct Panic;

#[inline(never)]
fn explode(input: &[u8]) -> ! {
    panic!("agent gave up on {} bytes", input.len())
}

impl Agent for Panic {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        explode(std::hint::black_box(&input))
    }
}

export_agent!(Panic);
