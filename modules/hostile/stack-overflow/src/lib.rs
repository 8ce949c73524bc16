//! Hostile: unbounded recursion on the wasm call stack. Must end in `trap`
//! (stack overflow) without touching the host's own stack.
use chassis_guest::{Agent, Error, export_agent};

struct Deep;

#[inline(never)]
#[expect(unconditional_recursion, reason = "the point of this guest")]
fn descend(depth: u64) -> u64 {
    // Scalars only, so every frame lives on the wasm stack rather than the
    // shadow stack in linear memory.
    std::hint::black_box(descend(std::hint::black_box(depth + 1))) + 1
}

impl Agent for Deep {
    fn run(_input: Vec<u8>) -> Result<Vec<u8>, Error> {
        Ok(descend(0).to_le_bytes().to_vec())
    }
}

export_agent!(Deep);
