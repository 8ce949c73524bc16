//! Who is calling: the client certificate's SAN, or `local` on loopback.

use std::net::SocketAddr;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::policy::LOCAL_CALLER;

/// Identity of a caller without a client certificate on a non-loopback
/// address (only possible when mTLS is explicitly turned off).
pub const ANONYMOUS_CALLER: &str = "anonymous";

/// The identity in a DER certificate: its first URI SAN (e.g. a SPIFFE id),
/// else its first DNS SAN, else its subject CN.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let names = &san.value.general_names;
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        });
        let dns = names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        });
        if let Some(id) = uri.or(dns) {
            return Some(id);
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// The caller of a request from `peer` with client certificates `certs`.
pub fn caller_identity(peer: Option<SocketAddr>, certs: Option<&[impl AsRef<[u8]>]>) -> String {
    if let Some(id) = certs
        .and_then(|c| c.first())
        .and_then(|c| certificate_identity(c.as_ref()))
    {
        return id;
    }
    match peer {
        Some(addr) if addr.ip().is_loopback() => LOCAL_CALLER.to_string(),
        _ => ANONYMOUS_CALLER.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_san_names_the_caller_and_loopback_is_local() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["coordinator.example".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        assert_eq!(
            certificate_identity(&der).as_deref(),
            Some("coordinator.example")
        );
        assert_eq!(
            caller_identity(Some("10.0.0.1:5".parse().unwrap()), Some(&[der][..])),
            "coordinator.example"
        );
        assert_eq!(
            caller_identity(Some("127.0.0.1:5".parse().unwrap()), None::<&[Vec<u8>]>),
            "local"
        );
        assert_eq!(
            caller_identity(Some("10.0.0.1:5".parse().unwrap()), None::<&[Vec<u8>]>),
            "anonymous"
        );
    }
}
