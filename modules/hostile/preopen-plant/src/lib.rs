//! Hostile: the two-run escape through a nested preopen. Under a policy
//! with `rw` on `/work`, input `plant` replaces `/work/in` with the
//! relative symlink `../../../../../../..`; under one that maps the same
//! host directory's `in` to `/in`, input `list` lists `/in`. If the host
//! followed the planted link when opening `/in`, the listing would be the
//! host's root directory.
use chassis_guest::{Agent, Error, export_agent};

struct Plant;

impl Agent for Plant {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let outcome = match String::from_utf8_lossy(&input).trim() {
            "plant" => probe::plant("/work", "in", "../../../../../../.."),
            "list" => probe::act("list /in"),
            other => Err(("InvalidInput".into(), format!("unknown op `{other}`"))),
        };
        outcome.map_err(|(code, message)| Error::new(code, message))
    }
}

export_agent!(Plant);
