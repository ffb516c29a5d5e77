//! Keeps a process's binds on the kernel's fast path for SO_REUSEPORT binds, on ports
//! where the server listens on several addresses.
//!
//! Why: the kernel keeps one fast path per port (`sk_reuseport_match()`,
//! net/ipv4/inet_connection_sock.c) that remembers the address of the last bind that
//! missed it; a bind of any other address misses it too and walks every socket bound to
//! its address and port (established and TIME_WAIT ones included) holding the port's
//! bind-hash lock, which every connection accepted on the port needs (bind_order.rs; the
//! figures are in docs/benchmarks.md). While each worker binds one socket per address,
//! one of its binds misses whatever the order.
//!
//! A wildcard address matches every address of its family, and the IPv6 wildcard without
//! IPV6_V6ONLY matches IPv4 ones too. So before it binds a port that has several
//! addresses, a process binds a SO_REUSEPORT socket to that wildcard ([::], or 0.0.0.0
//! when every address of the port is IPv4) and closes it, without listening: the fast
//! path then remembers the wildcard, and every later bind of the server's addresses
//! matches it. The key itself matches too when nothing else bound the port meanwhile (a
//! few microseconds); otherwise it misses once, walking the port once where each worker
//! would have walked. It never listens, so no connection ever reaches it.
//!
//! The kernel keeps the fast path correct by itself: a bind by another user, or without
//! SO_REUSEPORT, does not match it (and the latter turns it off). A key that cannot bind
//! (the port holds a socket of another user, or one without SO_REUSEPORT) changes nothing:
//! the binds then go as they would have, in bind_order's order.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::log::{self, Level};

/// The ports of `addrs` with two or more distinct addresses, in order of first
/// appearance, each with whether one of its addresses is IPv6. Port 0 (not chosen yet)
/// has no key.
pub(crate) fn keyed_ports(addrs: &[SocketAddr]) -> Vec<(u16, bool)> {
    let mut ports: Vec<(u16, bool)> = Vec::new();
    for a in addrs.iter().filter(|a| a.port() != 0) {
        if ports.iter().any(|&(p, _)| p == a.port()) {
            continue;
        }
        let same: Vec<&SocketAddr> = addrs.iter().filter(|b| b.port() == a.port()).collect();
        let distinct = same.iter().any(|b| b.ip() != a.ip());
        if distinct {
            ports.push((a.port(), same.iter().any(|b| b.is_ipv6())));
        }
    }
    ports
}

/// Binds and closes the wildcard key of every port of `addrs` that has several
/// addresses. Never fails: a key that cannot bind is logged at debug level.
pub(crate) fn bind_keys(addrs: impl IntoIterator<Item = SocketAddr>) {
    let addrs: Vec<SocketAddr> = addrs.into_iter().collect();
    for (port, v6) in keyed_ports(&addrs) {
        if let Err(e) = bind_key(port, v6) {
            log::emit(
                Level::Debug,
                &format!("port {port}: the wildcard bind that keeps this server's binds on the kernel's fast path failed ({e}); binds of its addresses may walk the port's sockets"),
            );
        }
    }
}

fn bind_key(port: u16, v6: bool) -> io::Result<()> {
    let addr: SocketAddr = if v6 { (Ipv6Addr::UNSPECIFIED, port).into() } else { (Ipv4Addr::UNSPECIFIED, port).into() };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    sock.set_reuse_port(true)?;
    if v6 {
        sock.set_only_v6(false)?;
    }
    sock.bind(&SockAddr::from(addr))
    // Closed here: the fast path keeps the address after the socket is gone.
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::set::Set;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_ports_with_several_addresses_get_a_key() {
        let addrs = [sa("127.0.0.1:80"), sa("127.0.0.1:443"), sa("[::1]:80"), sa("10.0.0.1:8080"), sa("10.0.0.2:8080")];
        assert_eq!(keyed_ports(&addrs), vec![(80, true), (8080, false)]);
        // The same address twice is one address; port 0 is not bound yet.
        assert!(keyed_ports(&[sa("127.0.0.1:80"), sa("127.0.0.1:80")]).is_empty());
        assert!(keyed_ports(&[sa("127.0.0.1:0"), sa("[::1]:0")]).is_empty());
    }

    fn reuseport(addr: SocketAddr) -> io::Result<Socket> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_port(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&SockAddr::from(addr))?;
        Ok(s)
    }

    /// Whether an IPv4 bind on `port` now takes the fast path, told without timing: a
    /// socket bound with SO_REUSEPORT that then turns it off conflicts with every later
    /// bind of its address, which the walk finds and the fast path does not look for.
    /// `before(port)` runs between the binds that leave the fast path on IPv6 and the
    /// probe; what it returns lives through the probe.
    fn ipv4_bind_takes_the_fast_path<T>(before: impl FnOnce(u16) -> T) -> bool {
        let held = reuseport(sa("127.0.0.1:0")).unwrap();
        let port = held.local_addr().unwrap().as_socket().unwrap().port();
        held.listen(8).unwrap();
        let v6 = reuseport(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).unwrap();
        v6.listen(8).unwrap();
        let _kept = before(port);
        held.set_reuse_port(false).unwrap();
        match reuseport(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => false,
            Err(e) => panic!("the probe's bind: {e}"),
        }
    }

    /// None when this kernel's IPv4 bind after an IPv6 one does not walk (nothing to
    /// keep then), or when IPv6 is not there.
    fn probe_works() -> Option<()> {
        if Socket::new(Domain::IPV6, Type::STREAM, None).and_then(|s| s.bind(&SockAddr::from(sa("[::1]:0")))).is_err() {
            eprintln!("SKIP: no IPv6 loopback");
            return None;
        }
        if ipv4_bind_takes_the_fast_path(|_| {}) {
            eprintln!("SKIP: on this kernel an IPv4 bind after an IPv6 one takes the fast path already");
            return None;
        }
        Some(())
    }

    #[test]
    fn after_the_key_an_ipv4_bind_that_would_walk_takes_the_fast_path() {
        if probe_works().is_none() {
            return;
        }
        assert!(ipv4_bind_takes_the_fast_path(|port| bind_key(port, true).unwrap()));
    }

    #[test]
    fn a_set_binds_the_key_before_its_sockets() {
        if probe_works().is_none() {
            return;
        }
        // A set listening on both addresses of the port opens (and binds a key); then
        // the probe's IPv4 bind matches.
        assert!(ipv4_bind_takes_the_fast_path(|port| {
            let mut s = Set::new();
            s.add_spec(&format!("127.0.0.1:{port}")).unwrap();
            s.add_spec(&format!("[::1]:{port}")).unwrap();
            s.open_single().unwrap();
            s
        }));
    }
}
