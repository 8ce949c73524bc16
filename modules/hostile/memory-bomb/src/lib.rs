//! Hostile: grows linear memory one MiB at a time and never frees it.
//! Must end in `memory-limit`.
use chassis_guest::{Agent, Error, export_agent};

struct Bomb;

impl Agent for Bomb {
    fn run(_input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            chunk[0] = 1;
            hoard.push(std::hint::black_box(chunk));
        }
    }
}

export_agent!(Bomb);
