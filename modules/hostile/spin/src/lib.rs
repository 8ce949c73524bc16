//! Hostile: never returns. Must end in `out-of-fuel`, or
//! `deadline-exceeded` when fuel is off.
use chassis_guest::{Agent, Error, export_agent};

struct Spin;

impl Agent for Spin {
    fn run(_input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export_agent!(Spin);
