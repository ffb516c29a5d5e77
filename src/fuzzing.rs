//! The pure parts the fuzz targets (`fuzz/`) drive without I/O. Compiled only with the
//! `fuzzing` feature, hidden from the docs, not part of the API: the spec parser is
//! private, and the C API's `reuseport_set_add` resolves host names, which a fuzzer must
//! not do (every random name would be a DNS query).

use std::net::{IpAddr, SocketAddr};

use crate::spec::{self, Host};
use crate::Options;

/// One spec as the parser read it. `addr` and `canonical` are `None` for a host name
/// (resolved later, by `Set::add_spec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSpec {
    pub addr: Option<SocketAddr>,
    pub options: Options,
    /// The text `reuseport_listener_get_spec()` would print for it, which must parse back
    /// to the same address and options.
    pub canonical: Option<String>,
}

/// Parses one listen spec without resolving anything.
pub fn parse_spec(text: &str) -> crate::Result<ParsedSpec> {
    let s = spec::parse(text)?;
    let ip = match s.host {
        Host::Any => Some(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        Host::Ip(ip) => Some(ip),
        Host::Name(_) => None,
    };
    let addr = ip.map(|ip| SocketAddr::new(ip, s.port));
    Ok(ParsedSpec { addr, options: s.options, canonical: addr.map(|a| spec::canonical(&a, &s.options)) })
}
