//! Stays alive for the number of milliseconds in its input (default 1000)
//! without burning CPU: `std::thread::sleep` becomes a WASI monotonic-clock
//! poll, which the host parks without holding a thread. Load tests use it
//! to hold thousands of sandboxes live at once.
use chassis_guest::{Agent, Error, export_agent};

struct Sleeper;

impl Agent for Sleeper {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let text = String::from_utf8_lossy(&input);
        let ms: u64 = match text.trim() {
            "" => 1000,
            n => n
                .parse()
                .map_err(|_| Error::new("bad-input", format!("`{n}` is not a number of milliseconds")))?,
        };
        std::thread::sleep(std::time::Duration::from_millis(ms));
        Ok(format!("slept {ms} ms").into_bytes())
    }
}

export_agent!(Sleeper);
