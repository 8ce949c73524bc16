//! Hostile: tries to leave its sandbox: `..` traversal, absolute paths,
//! symlinks out of a preopen, writes to read-only dirs, host env vars, and
//! connections to hosts its policy does not list (see `probe`). Every
//! attempt must come back as an error the guest reports as `guest-error`
//! with the I/O error kind as its code.
use chassis_guest::{Agent, Error, export_agent};

struct Escape;

impl Agent for Escape {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let request = String::from_utf8_lossy(&input);
        probe::act(&request).map_err(|(code, message)| Error::new(code, message))
    }
}

export_agent!(Escape);
