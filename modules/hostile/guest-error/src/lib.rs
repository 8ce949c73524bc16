//! Returns an agent error on purpose. Must end in `guest-error` carrying the
//! code and message unchanged.
use chassis_guest::{Agent, Error, export_agent};

struct Refuse;

impl Agent for Refuse {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        Err(Error::new(
            "refused",
            format!("will not handle {} bytes", input.len()),
        ))
    }
}

export_agent!(Refuse);
