//! Network value types used in the configuration, parsed from their usual text forms.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Why a text is not the address or URL it should be; the text names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAddress {
    #[error("{0:?} is neither an IP address nor a valid host name")]
    NotHost(String),
    #[error("{0:?} has no port; write host:port")]
    NoPort(String),
    #[error("{0:?} has an unclosed '['")]
    Unclosed(String),
    #[error("{0:?} in brackets is not an IPv6 address")]
    NotIpv6(String),
    #[error("unexpected {after:?} after ']' in {text:?}")]
    AfterBracket { after: String, text: String },
    #[error("{0:?}: write IPv6 addresses in brackets, e.g. [fd00::1]:7402")]
    BareIpv6(String),
    #[error("port {0:?} is not a number between 1 and 65535")]
    Port(String),
    #[error("{0:?} needs a prefix length, e.g. 192.168.1.100/24")]
    NoPrefix(String),
    #[error("{0:?} is not an IP address")]
    NotIp(String),
    #[error("prefix length {prefix:?} must be between 1 and {max}")]
    PrefixLength { prefix: String, max: u8 },
    #[error("{0:?} must start with http:// or https://")]
    Scheme(String),
    #[error("{0:?} contains whitespace")]
    Whitespace(String),
    #[error("{0:?}: credentials in the URL are not supported")]
    Credentials(String),
}

/// An IP address or a DNS host name (stored in lower case).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }
}

impl FromStr for Host {
    type Err = BadAddress;

    fn from_str(s: &str) -> Result<Self, BadAddress> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if is_host_name(s) {
            return Ok(Host::Name(s.to_ascii_lowercase()));
        }
        Err(BadAddress::NotHost(s.into()))
    }
}

/// RFC 1123 host name. A name whose last label is all digits is refused so that a
/// mistyped IPv4 address such as `10.0.0.256` is not taken for a name.
fn is_host_name(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    s.len() <= 253
        && labels.iter().all(label_ok)
        && !labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// `host:port`, with IPv6 addresses in brackets: `[fd00::3]:7402`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = BadAddress;

    fn from_str(s: &str) -> Result<Self, BadAddress> {
        let (host, port) = split_host_port(s)?;
        let port = port.ok_or_else(|| BadAddress::NoPort(s.into()))?;
        Ok(HostPort {
            host: host.parse()?,
            port: parse_port(port)?,
        })
    }
}

/// Splits `host[:port]` / `[v6][:port]`; a bare IPv6 address is refused as ambiguous.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), BadAddress> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| BadAddress::Unclosed(s.into()))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(BadAddress::NotIpv6(host.into()));
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(BadAddress::AfterBracket {
                    after: after.into(),
                    text: s.into(),
                }),
            },
        };
    }
    match s.split_once(':') {
        Some((_, port)) if port.contains(':') => Err(BadAddress::BareIpv6(s.into())),
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((s, None)),
    }
}

fn parse_port(s: &str) -> Result<u16, BadAddress> {
    match s.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(BadAddress::Port(s.into())),
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// An address with its prefix length, such as `192.168.1.100/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for IpPrefix {
    type Err = BadAddress;

    fn from_str(s: &str) -> Result<Self, BadAddress> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| BadAddress::NoPrefix(s.into()))?;
        let addr: IpAddr = addr.parse().map_err(|_| BadAddress::NotIp(addr.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(prefix) if (1..=max).contains(&prefix) => Ok(IpPrefix { addr, prefix }),
            _ => Err(BadAddress::PrefixLength {
                prefix: prefix.into(),
                max,
            }),
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An `http://` or `https://` URL; only what the checkers and etcd clients need.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpUrl {
    pub https: bool,
    pub host: Host,
    /// Explicit port, or 80 / 443 from the scheme.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl FromStr for HttpUrl {
    type Err = BadAddress;

    fn from_str(s: &str) -> Result<Self, BadAddress> {
        let (https, rest) = if let Some(rest) = s.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = s.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(BadAddress::Scheme(s.into()));
        };
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(BadAddress::Whitespace(s.into()));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(BadAddress::Credentials(s.into()));
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            Some(port) => parse_port(port)?,
            None if https => 443,
            None => 80,
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(HttpUrl {
            https,
            host: host.parse()?,
            port,
            path,
        })
    }
}

impl HttpUrl {
    /// `scheme://host:port`, IPv6 addresses in brackets.
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let host = HostPort {
            host: self.host.clone(),
            port: self.port,
        };
        format!("{scheme}://{host}")
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin(), self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            "10.0.0.1".parse(),
            Ok(Host::Ip("10.0.0.1".parse().unwrap()))
        );
        assert_eq!("fd00::1".parse(), Ok(Host::Ip("fd00::1".parse().unwrap())));
        assert_eq!("Node-1.LAN".parse(), Ok(Host::Name("node-1.lan".into())));
        for bad in ["10.0.0.256", "-a", "a..b", "", "a b", "[fd00::1]", "a_b"] {
            assert!(bad.parse::<Host>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_ports() {
        let hp: HostPort = "[fd00::3]:7402".parse().unwrap();
        assert_eq!(hp.port, 7402);
        assert_eq!(hp.to_string(), "[fd00::3]:7402");
        assert_eq!("witness.lan:1".parse::<HostPort>().unwrap().port, 1);
        for bad in [
            "10.0.0.3",
            "10.0.0.3:0",
            "10.0.0.3:70000",
            "fd00::3:7402",
            "[x]:1",
        ] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        let p: IpPrefix = "fd00::100/64".parse().unwrap();
        assert_eq!((p.prefix, p.to_string().as_str()), (64, "fd00::100/64"));
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "10.0.0.1/0",
            "fd00::1/129",
            "x/24",
        ] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        let u: HttpUrl = "https://[fd00::5]/health?x=1".parse().unwrap();
        assert_eq!(
            (u.https, u.port, u.path.as_str()),
            (true, 443, "/health?x=1")
        );
        let u: HttpUrl = "http://10.0.0.5:2379".parse().unwrap();
        assert_eq!(u.to_string(), "http://10.0.0.5:2379/");
        for bad in [
            "ftp://x",
            "http://",
            "http://u:p@x/",
            "http://x:0/",
            "http://a b/",
        ] {
            assert!(bad.parse::<HttpUrl>().is_err(), "{bad}");
        }
    }
}
