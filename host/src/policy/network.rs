//! The network egress allowlist and the connect-time check.
//!
//! An entry is `host:port`. At every connect the guest's target address is
//! checked against what the listed names resolve to *now*, so a DNS answer
//! that changes after the guest looked it up is caught. Addresses in special
//! ranges (loopback, private, link-local and cloud metadata, unspecified,
//! multicast) are refused unless that exact IP is listed literally: a
//! hostname that resolves into them is treated as an attack.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

/// One allowlisted destination.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Endpoint {
    /// A DNS name or an IP literal (without brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    /// Parses `host:port` (`[v6]:port` for IPv6 literals).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("`{text}`: an IPv6 entry is written `[addr]:port`"))?;
            host.parse::<Ipv6Addr>()
                .map_err(|_| format!("`{text}`: `{host}` is not an IPv6 address"))?;
            (host, port)
        } else {
            text.rsplit_once(':')
                .ok_or_else(|| format!("`{text}` has no port; write `host:port`"))?
        };
        if host.is_empty() {
            return Err(format!("`{text}` has no host"));
        }
        if host.contains('*') {
            return Err(format!(
                "`{text}`: wildcards are not allowed; list each host"
            ));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        {
            return Err(format!("`{text}`: `{host}` is not a valid host name"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{text}`: `{port}` is not a port from 1 to 65535"))?;
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The IP if the host is a literal.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Why an address is special, if it is.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return special_v4(v4);
            }
            let seg0 = v6.segments()[0];
            if v6 == "fd00:ec2::254".parse::<Ipv6Addr>().expect("valid literal") {
                Some("cloud metadata")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg0 & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if seg0 & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else {
                None
            }
        }
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.octets()[..2] == [169, 254] {
        Some("link-local / cloud metadata")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_unspecified() || ip.octets()[0] == 0 {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("multicast / broadcast")
    } else if ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64 {
        Some("shared address space (CGNAT)")
    } else {
        None
    }
}

/// The outbound network a policy grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkPolicy {
    /// Allowed destinations, sorted.
    pub allow: Vec<Endpoint>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDenial {
    /// The address the guest tried.
    pub target: SocketAddr,
    /// Why.
    pub reason: String,
}

impl NetworkPolicy {
    /// Whether any egress is granted at all.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
    }

    /// Decides whether a TCP connection to `addr` is allowed, resolving the
    /// listed names now.
    pub async fn check_connect(&self, addr: SocketAddr) -> Result<(), NetworkDenial> {
        let deny = |reason: String| NetworkDenial {
            target: addr,
            reason,
        };
        let ip = addr.ip();
        let candidates: Vec<&Endpoint> = self
            .allow
            .iter()
            .filter(|e| e.port == addr.port())
            .collect();
        if candidates.is_empty() {
            return Err(deny(format!(
                "port {} is not on the policy's allowlist",
                addr.port()
            )));
        }
        // A literally listed IP is allowed even in a special range: someone wrote it down.
        if candidates.iter().any(|e| e.literal_ip() == Some(ip)) {
            return Ok(());
        }
        if let Some(range) = special_range(ip) {
            return Err(deny(format!(
                "{ip} is a {range} address, refused unless listed as a literal IP"
            )));
        }
        for endpoint in candidates.iter().filter(|e| e.literal_ip().is_none()) {
            let Ok(resolved) =
                tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await
            else {
                continue;
            };
            if resolved.map(|a| a.ip()).any(|r| r == ip) {
                return Ok(());
            }
        }
        Err(deny(format!(
            "{addr} is not an address of any allowed host ({})",
            candidates
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

impl NetworkPolicy {
    /// Decides whether an HTTP request to `host:port` is allowed: the name
    /// (or IP) must be listed with that port, and every address a listed
    /// name resolves to now must be outside the special ranges. Returns the
    /// vetted address to connect to.
    pub async fn check_http(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let Some(endpoint) = self.allow.iter().find(|e| e.host == host && e.port == port) else {
            return Err(format!("{host}:{port} is not on the policy's allowlist"));
        };
        if let Some(ip) = endpoint.literal_ip() {
            return Ok(SocketAddr::new(ip, port));
        }
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?
            .collect();
        if let Some(bad) = resolved.iter().find(|a| special_range(a.ip()).is_some()) {
            let range = special_range(bad.ip()).unwrap_or_default();
            return Err(format!(
                "{host} resolves to {}, a {range} address, refused unless listed as a literal IP",
                bad.ip()
            ));
        }
        resolved
            .into_iter()
            .next()
            .ok_or_else(|| format!("{host} resolves to no address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_names_v4_and_v6() {
        assert_eq!(
            Endpoint::parse("API.example.com:443").unwrap().host,
            "api.example.com"
        );
        assert_eq!(Endpoint::parse("10.0.0.1:8080").unwrap().port, 8080);
        let v6 = Endpoint::parse("[::1]:9000").unwrap();
        assert_eq!(v6.literal_ip(), Some("::1".parse().unwrap()));
        assert_eq!(v6.to_string(), "[::1]:9000");
    }

    #[test]
    fn bad_endpoints_say_what_is_wrong() {
        assert!(
            Endpoint::parse("example.com")
                .unwrap_err()
                .contains("no port")
        );
        assert!(
            Endpoint::parse("example.com:0")
                .unwrap_err()
                .contains("1 to 65535")
        );
        assert!(
            Endpoint::parse("example.com:http")
                .unwrap_err()
                .contains("1 to 65535")
        );
        assert!(
            Endpoint::parse("*.example.com:443")
                .unwrap_err()
                .contains("wildcards")
        );
        assert!(Endpoint::parse(":443").unwrap_err().contains("no host"));
        assert!(Endpoint::parse("[zz]:1").unwrap_err().contains("IPv6"));
        assert!(
            Endpoint::parse("a b:1")
                .unwrap_err()
                .contains("not a valid host")
        );
    }

    #[test]
    fn special_ranges_are_recognised() {
        for (ip, want) in [
            ("169.254.169.254", true),
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("192.168.0.1", true),
            ("172.16.0.1", true),
            ("100.64.0.1", true),
            ("0.0.0.0", true),
            ("fd00:ec2::254", true),
            ("::1", true),
            ("fe80::1", true),
            ("::ffff:127.0.0.1", true),
            ("93.184.216.34", false),
            ("2606:4700::1111", false),
        ] {
            assert_eq!(special_range(ip.parse().unwrap()).is_some(), want, "{ip}");
        }
    }

    #[tokio::test]
    async fn connect_checks_port_literal_and_range() {
        let policy = NetworkPolicy {
            allow: vec![
                Endpoint::parse("127.0.0.1:8080").unwrap(),
                Endpoint::parse("localhost:9090").unwrap(),
            ],
        };
        assert!(
            policy
                .check_connect("127.0.0.1:8080".parse().unwrap())
                .await
                .is_ok()
        );
        let err = policy
            .check_connect("127.0.0.1:22".parse().unwrap())
            .await
            .unwrap_err();
        assert!(err.reason.contains("port 22"));
        // `localhost` resolves to loopback: a name never unlocks a special range.
        let err = policy
            .check_connect("127.0.0.1:9090".parse().unwrap())
            .await
            .unwrap_err();
        assert!(err.reason.contains("loopback"), "{}", err.reason);
        let err = NetworkPolicy::default()
            .check_connect("169.254.169.254:80".parse().unwrap())
            .await
            .unwrap_err();
        assert!(err.reason.contains("port 80"));
    }
}
