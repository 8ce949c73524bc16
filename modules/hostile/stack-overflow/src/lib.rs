//! Hostile: unbounded recursion. Must end in `trap` (stack overflow), not
//! crash the host.
use chassis_guest::{Agent, Error, export_agent};

struct Deep;

#[inline(never)]
#[expect(unconditional_recursion, reason = "the point of this guest")]
fn descend(depth: u64, pad: [u64; 16]) -> u64 {
    let next = std::hint::black_box(pad);
    descend(depth + 1, next) + next[(depth % 16) as usize]
}

impl Agent for Deep {
    fn run(_input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let n = descend(0, [1; 16]);
        Ok(n.to_le_bytes().to_vec())
    }
}

export_agent!(Deep);
