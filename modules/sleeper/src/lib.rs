//! Stays alive for the number of milliseconds in its input (default 1000)
//! without burning CPU: `std::thread::sleep` becomes a WASI monotonic-clock
//! poll, which the host parks without holding a thread. Load tests use it
//! to hold thousands of sandboxes live at once. A second word in the input
//! names a secret to ask for first (refused unless granted), so the audit
//! tests can cancel a run that already has a denial on record.
use chassis_guest::{Agent, Error, export_agent, secret};

struct Sleeper;

impl Agent for Sleeper {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let text = String::from_utf8_lossy(&input);
        let mut words = text.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some(name) = words.next() {
            let _ = secret(name);
        }
        let ms: u64 = match first {
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
