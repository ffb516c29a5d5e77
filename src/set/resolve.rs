//! Turns a parsed spec into socket addresses. The only place that may call the resolver, so
//! `spec.rs` stays pure and workers never resolve (they reuse the master's addresses).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use crate::error::{Error, Result, Step};
use crate::spec::{Host, ListenSpec};

/// Every address a spec stands for. A name resolving to several addresses yields one
/// listener each, as nginx does for `listen name:port`.
pub(crate) fn addresses(spec: &ListenSpec) -> Result<Vec<SocketAddr>> {
    match &spec.host {
        Host::Any => Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), spec.port)]),
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, spec.port)]),
        Host::Name(name) => {
            let found = (name.as_str(), spec.port).to_socket_addrs().map_err(|e| {
                Error::new(
                    libc::EINVAL,
                    Step::Resolve,
                    format!("host \"{name}\" does not resolve ({e}): use an IP address, or fix the name in /etc/hosts or DNS"),
                )
            })?;
            let mut out: Vec<SocketAddr> = Vec::new();
            for a in found {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            if out.is_empty() {
                return Err(Error::new(libc::EINVAL, Step::Resolve, format!("host \"{name}\" resolves to no address")));
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse;

    #[test]
    fn literal_and_wildcard() {
        assert_eq!(addresses(&parse("*:81").unwrap()).unwrap(), vec!["0.0.0.0:81".parse().unwrap()]);
        assert_eq!(addresses(&parse("[::1]:82").unwrap()).unwrap(), vec!["[::1]:82".parse().unwrap()]);
    }

    #[test]
    fn localhost_resolves_and_unknown_names_say_so() {
        let a = addresses(&parse("localhost:83").unwrap()).unwrap();
        assert!(a.iter().all(|a| a.ip().is_loopback() && a.port() == 83), "{a:?}");
        let e = addresses(&parse("no-such-host.invalid:80").unwrap()).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.message.contains("host \"no-such-host.invalid\" does not resolve"), "{}", e.message);
    }
}
