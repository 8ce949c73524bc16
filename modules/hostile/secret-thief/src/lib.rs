//! Hostile: asks for the secret named by its input, granted or not. An
//! ungranted name must come back `denied`, reported here as the
//! `guest-error` code `denied`.
use chassis_guest::{Agent, Error, SecretError, export_agent, secret};

struct Thief;

impl Agent for Thief {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let name = String::from_utf8_lossy(&input).trim().to_string();
        match secret(&name) {
            Ok(value) => Ok(format!("got {} bytes", value.len()).into_bytes()),
            Err(SecretError::Denied(why)) => Err(Error::new("denied", why)),
            Err(SecretError::Unavailable(why)) => Err(Error::new("unavailable", why)),
        }
    }
}

export_agent!(Thief);
