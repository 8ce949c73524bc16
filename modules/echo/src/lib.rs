//! The trivial agent: returns its input unchanged. Benchmarks use it to
//! measure the host's own cost per run.
use chassis_guest::{Agent, Error, export_agent};

struct Echo;

impl Agent for Echo {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        Ok(input)
    }
}

export_agent!(Echo);
