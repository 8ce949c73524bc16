//! The first agent: greets whoever the input names.
use chassis_guest::{Agent, Error, export_agent, log};

struct Hello;

impl Agent for Hello {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let name = String::from_utf8(input)
            .map_err(|_| Error::new("bad-input", "the name must be UTF-8"))?;
        let name = match name.trim() {
            "" => "world",
            n => n,
        };
        log::info("greeting", &[("name", name)]);
        Ok(format!("Hello, {name}!").into_bytes())
    }
}

export_agent!(Hello);
