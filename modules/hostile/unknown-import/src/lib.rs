//! Hostile: imports an interface the host does not provide. Must be refused
//! as `invalid-module`, naming the import.
wit_bindgen::generate!({ world: "agent", path: "wit" });

struct Curious;

impl Guest for Curious {
    fn run(_input: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(chassis::agent::telepathy::read_host_mind().into_bytes())
    }
}

export!(Curious);
