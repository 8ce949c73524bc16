//! Who is calling.
//!
//! The rule: a client certificate's first URI SAN (e.g. a SPIFFE id), else
//! its first DNS SAN; its subject CN only when `server.tls.identity_from_cn`
//! is on (a name-constrained sub-CA can issue a SAN-less certificate with
//! any CN). A certificate with none of these is `anonymous`. Without a
//! certificate the caller is `local` on a plaintext loopback listener and
//! `anonymous` otherwise (TLS without a client certificate, only possible
//! with `require_client_cert: false`).
//!
//! `local` and `anonymous` are reserved: only the transport grants them.
//! A certificate that names either (in any case) is refused outright, so
//! no certificate can claim the privileges of `local` (every policy, and
//! admin on a loopback host by default).

use std::net::SocketAddr;

use thiserror::Error;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

pub use crate::policy::{ANONYMOUS_CALLER, LOCAL_CALLER};

/// The identities only the transport grants.
pub const RESERVED_CALLERS: [&str; 2] = [LOCAL_CALLER, ANONYMOUS_CALLER];

/// Whether `name` is a reserved identity (compared without case).
pub fn is_reserved(name: &str) -> bool {
    RESERVED_CALLERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name.trim()))
}

/// How the listener derives identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentityRules {
    /// The listener speaks TLS (then no caller is `local`).
    pub tls: bool,
    /// Fall back to the subject CN when a certificate has no URI or DNS SAN.
    pub cn_fallback: bool,
}

/// A client certificate named a reserved identity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "the client certificate names the reserved identity `{0}`; `local` and `anonymous` are granted only by the transport"
)]
pub struct ReservedIdentity(pub String);

/// The identity in a DER certificate: its first URI SAN, else its first
/// DNS SAN, else (only with `cn_fallback`) its subject CN.
pub fn certificate_identity(der: &[u8], cn_fallback: bool) -> Option<String> {
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
    if !cn_fallback {
        return None;
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// The caller of a request from `peer` with client certificates `certs`.
pub fn caller_identity(
    rules: IdentityRules,
    peer: Option<SocketAddr>,
    certs: Option<&[impl AsRef<[u8]>]>,
) -> Result<String, ReservedIdentity> {
    if let Some(cert) = certs.and_then(|c| c.first()) {
        return match certificate_identity(cert.as_ref(), rules.cn_fallback) {
            Some(id) if is_reserved(&id) => Err(ReservedIdentity(id)),
            Some(id) => Ok(id),
            None => Ok(ANONYMOUS_CALLER.to_string()),
        };
    }
    Ok(match peer {
        Some(addr) if !rules.tls && addr.ip().is_loopback() => LOCAL_CALLER.to_string(),
        _ => ANONYMOUS_CALLER.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str], cn: Option<&str>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    const PLAIN: IdentityRules = IdentityRules {
        tls: false,
        cn_fallback: false,
    };
    const TLS: IdentityRules = IdentityRules {
        tls: true,
        cn_fallback: false,
    };

    #[test]
    fn the_san_names_the_caller_and_plaintext_loopback_is_local() {
        let der = cert(&["coordinator.example"], Some("ignored"));
        assert_eq!(
            certificate_identity(&der, false).as_deref(),
            Some("coordinator.example")
        );
        let remote = Some("10.0.0.1:5".parse().unwrap());
        let loopback = Some("127.0.0.1:5".parse().unwrap());
        assert_eq!(
            caller_identity(TLS, remote, Some(&[der][..])).unwrap(),
            "coordinator.example"
        );
        assert_eq!(
            caller_identity(PLAIN, loopback, None::<&[Vec<u8>]>).unwrap(),
            "local"
        );
        assert_eq!(
            caller_identity(PLAIN, remote, None::<&[Vec<u8>]>).unwrap(),
            "anonymous"
        );
        // TLS on loopback without a certificate is not `local`.
        assert_eq!(
            caller_identity(TLS, loopback, None::<&[Vec<u8>]>).unwrap(),
            "anonymous"
        );
    }

    #[test]
    fn the_cn_counts_only_when_configured() {
        let der = cert(&[], Some("ops.example"));
        assert_eq!(certificate_identity(&der, false), None);
        let peer = Some("127.0.0.1:5".parse().unwrap());
        assert_eq!(
            caller_identity(TLS, peer, Some(&[der.clone()][..])).unwrap(),
            "anonymous"
        );
        let with_cn = IdentityRules {
            cn_fallback: true,
            ..TLS
        };
        assert_eq!(
            caller_identity(with_cn, peer, Some(&[der][..])).unwrap(),
            "ops.example"
        );
    }

    #[test]
    fn no_certificate_can_be_local_or_anonymous() {
        let peer = Some("127.0.0.1:5".parse().unwrap());
        let with_cn = IdentityRules {
            cn_fallback: true,
            ..TLS
        };
        for der in [
            cert(&["local"], None),
            cert(&["LOCAL"], None),
            cert(&["anonymous"], Some("x")),
            cert(&[], Some("local")),
        ] {
            let e = caller_identity(with_cn, peer, Some(&[der][..])).unwrap_err();
            assert!(is_reserved(&e.0), "{e}");
        }
        // Without the CN fallback a CN of `local` is simply no identity.
        let der = cert(&[], Some("local"));
        assert_eq!(
            caller_identity(TLS, peer, Some(&[der][..])).unwrap(),
            "anonymous"
        );
    }
}
