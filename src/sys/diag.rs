//! The accept queue of the TCP listeners on some ports in this network namespace, from the
//! kernel's sock_diag interface (what `ss -lt` shows as Recv-Q). Needs no privilege;
//! sockets are told apart by inode, which is how the watch recognises a worker's socket
//! without holding it. The kernel filters by port (a sock_diag bytecode, as `ss -lt
//! sport = :80` sends), so a host with thousands of listeners costs the watch nothing
//! extra per tick.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
/// Beyond this many ports the dump is not filtered (a jump over them would not fit in u16).
const MAX_FILTERED_PORTS: usize = 4096;

#[repr(C)]
struct Request {
    // struct nlmsghdr
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    // struct inet_diag_req_v2
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: [u8; 48],
}

/// A listener as sock_diag reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listener {
    /// The address it is bound to (unspecified for a wildcard).
    pub ip: std::net::IpAddr,
    pub port: u16,
    /// The device it is bound to (idiag_if: a link-local address's scope, or
    /// SO_BINDTODEVICE; 0 for none). The kernel keeps sockets of different devices in
    /// different reuseport groups.
    pub dev: u32,
    /// Connections waiting in the accept queue.
    pub queue: u32,
}

/// The TCP listeners of `families` (AF_INET, AF_INET6) on `ports` (all ports when empty)
/// in this namespace, by inode.
pub(crate) fn tcp_listeners(families: &[i32], ports: &[u16]) -> io::Result<HashMap<u64, Listener>> {
    // SAFETY: a plain socket(2) call.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let filter = port_filter(ports);
    let mut out = HashMap::new();
    for &family in families {
        dump(&sock, family as u8, &filter, &mut out)?;
    }
    Ok(out)
}

/// sock_diag bytecode accepting a socket whose local port is one of `ports` (empty: no
/// filter). Each op is {code, yes, no: u16} and a port test carries the port in a second
/// op's `no`; the kernel moves on by `yes` bytes on a match and `no` otherwise, and
/// accepts a socket when it lands exactly on the end. Per port but the last: a test
/// (match: on to the jump; else: over it, to the next test) and a jump to the end. The
/// last test's miss lands 4 bytes past the end: rejected. Laid out as iproute2's `ss`
/// compiles `sport = :A or sport = :B`, which the kernel's audit walks in full.
fn port_filter(ports: &[u16]) -> Vec<u8> {
    if ports.len() > MAX_FILTERED_PORTS {
        return Vec::new(); // the jumps are u16: filter nothing rather than wrap
    }
    let op = |code: u8, yes: u8, no: u16| {
        let mut b = vec![code, yes];
        b.extend_from_slice(&no.to_ne_bytes());
        b
    };
    let mut bc = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        bc.extend(op(INET_DIAG_BC_S_EQ, 8, 12));
        bc.extend(op(0, 0, port));
        if i + 1 < ports.len() {
            // To the end: over itself (4) and the ports left (12 each, the last without a
            // jump: 12 * left - 4).
            let left = ports.len() - 1 - i;
            bc.extend(op(INET_DIAG_BC_JMP, 4, (12 * left) as u16));
        }
    }
    bc
}

fn dump(sock: &OwnedFd, family: u8, filter: &[u8], out: &mut HashMap<u64, Listener>) -> io::Result<()> {
    let attr_len = if filter.is_empty() { 0 } else { 4 + filter.len() };
    let req = Request {
        len: (std::mem::size_of::<Request>() + attr_len) as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: NLM_F_REQUEST | NLM_F_DUMP,
        seq: 1,
        pid: 0,
        family,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 0,
        pad: 0,
        states: 1 << TCP_LISTEN,
        id: [0; 48],
    };
    // SAFETY: the request struct's bytes, a repr(C) struct without padding.
    let head =
        unsafe { std::slice::from_raw_parts(&req as *const Request as *const u8, std::mem::size_of::<Request>()) };
    let mut msg = head.to_vec();
    if !filter.is_empty() {
        msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        msg.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        msg.extend_from_slice(filter);
    }
    // SAFETY: sending a buffer we own, of its length; the kernel is the default destination.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr() as *const libc::c_void, msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own, of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut at = 0usize;
        let n = n as usize;
        while at + 16 <= n {
            let u32_at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
            let len = u32_at(at) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if len < 16 || at + len > n {
                break;
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = -(u32_at(at + 16) as i32);
                    return if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(errno)) };
                }
                SOCK_DIAG_BY_FAMILY if len >= 16 + 72 => {
                    let m = at + 16;
                    let port = u16::from_be_bytes([buf[m + 4], buf[m + 5]]);
                    let src: [u8; 16] = buf[m + 8..m + 24].try_into().expect("16 bytes");
                    let ip = if buf[m] == libc::AF_INET as u8 {
                        std::net::IpAddr::from([src[0], src[1], src[2], src[3]])
                    } else {
                        std::net::IpAddr::from(src)
                    };
                    let dev = u32_at(m + 40);
                    out.insert(u32_at(m + 68) as u64, Listener { ip, port, dev, queue: u32_at(m + 56) });
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

impl Listener {
    /// Whether it is bound to `addr` on device `dev` exactly: a member of that group (or of
    /// another user's, which the kernel keeps apart). The kernel keeps sockets of
    /// different devices in different reuseport groups; `dev` comes from group_device().
    pub(crate) fn is_on(&self, addr: &std::net::SocketAddr, dev: u32) -> bool {
        self.port == addr.port() && self.ip == addr.ip() && self.dev == dev
    }
}

/// The device of the group on `addr` whose members include sockets `own` (inodes): that
/// of the first of them listed on `addr` (under `ip vrf exec`, or SO_BINDTODEVICE, every
/// socket a server makes is bound to a device), or else the device bind() gives `addr`.
pub(crate) fn group_device(
    listeners: &HashMap<u64, Listener>,
    own: impl IntoIterator<Item = u64>,
    addr: &std::net::SocketAddr,
) -> u32 {
    own.into_iter()
        .filter_map(|ino| listeners.get(&ino))
        .find(|l| l.port == addr.port() && l.ip == addr.ip())
        .map_or_else(|| device_of(addr), |l| l.dev)
}

/// The device bind() gives a socket bound to `addr`: the scope id of a link-local
/// address (a listener's address is never multicast), none otherwise.
fn device_of(addr: &std::net::SocketAddr) -> u32 {
    match addr {
        // fe80::/10 (Ipv6Addr::is_unicast_link_local() is newer than the MSRV)
        std::net::SocketAddr::V6(a) if a.ip().segments()[0] & 0xffc0 == 0xfe80 => a.scope_id(),
        _ => 0,
    }
}

/// Whether another TCP listener than socket `inode` listens on `addr`'s port in its
/// address family (a running group to join). False when sock_diag cannot be read.
pub(crate) fn others_on_port(addr: &std::net::SocketAddr, inode: u64) -> bool {
    let family = if addr.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
    tcp_listeners(&[family], &[addr.port()])
        .is_ok_and(|ls| ls.iter().any(|(ino, l)| l.port == addr.port() && *ino != inode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sees_a_listener_and_its_queue() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c1 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _c2 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap().ino();
        let all = tcp_listeners(&[libc::AF_INET], &[]).unwrap();
        let me = all.get(&ino).expect("our listener is listed");
        assert_eq!(me.port, port);
        assert_eq!(me.queue, 2, "two connections wait to be accepted");
        assert!(me.is_on(&l.local_addr().unwrap(), 0), "listed with its address: {me:?}");
        assert!(!me.is_on(&std::net::SocketAddr::from(([127, 0, 0, 2], port)), 0), "another address is another group");
        // An IPv6 address is read whole (where the host has IPv6).
        if let Ok(l6) = std::net::TcpListener::bind("[::1]:0") {
            let ino6 = std::fs::metadata(format!("/proc/self/fd/{}", l6.as_raw_fd())).unwrap().ino();
            let all6 = tcp_listeners(&[libc::AF_INET6], &[l6.local_addr().unwrap().port()]).unwrap();
            assert!(all6.get(&ino6).expect("listed").is_on(&l6.local_addr().unwrap(), 0));
        }
    }

    #[test]
    fn a_group_bound_to_a_device_and_one_that_is_not_are_told_apart() {
        let reuseport = || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s
        };
        let plain = reuseport();
        plain.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        plain.listen(8).unwrap();
        let addr = plain.local_addr().unwrap().as_socket().unwrap();
        let (dev_a, dev_b) = (reuseport(), reuseport());
        if let Err(e) = dev_a.bind_device(Some(b"lo")) {
            // SO_BINDTODEVICE needs CAP_NET_RAW.
            eprintln!("SKIP a_group_bound_to_a_device_and_one_that_is_not_are_told_apart: SO_BINDTODEVICE: {e}");
            return;
        }
        dev_b.bind_device(Some(b"lo")).unwrap();
        for s in [&dev_a, &dev_b] {
            s.bind(&addr.into()).unwrap();
            s.listen(8).unwrap();
        }
        let ino = |fd: i32| std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
        let (p, a, b) = (ino(plain.as_raw_fd()), ino(dev_a.as_raw_fd()), ino(dev_b.as_raw_fd()));
        let all = tcp_listeners(&[libc::AF_INET], &[addr.port()]).unwrap();
        // The plain group: its own socket's device, none; the device-bound ones are not on it.
        let plain_dev = group_device(&all, [p], &addr);
        assert_eq!(plain_dev, 0);
        assert!(all[&p].is_on(&addr, plain_dev));
        assert!(!all[&a].is_on(&addr, plain_dev), "bound to lo: another group than {addr}'s");
        // A group whose own sockets are bound to a device (as under `ip vrf exec`): its
        // members are on it, the plain socket is not.
        let lo_dev = group_device(&all, [a], &addr);
        assert_ne!(lo_dev, 0, "its device is read: {:?}", all[&a]);
        assert!(all[&b].is_on(&addr, lo_dev), "a sibling bound to the same device");
        assert!(!all[&p].is_on(&addr, lo_dev));
        // Without any of its own sockets listed: the device bind() gives the address.
        assert_eq!(group_device(&all, [12345], &addr), 0);
    }

    #[test]
    fn a_link_local_address_is_on_its_interface_only() {
        let on = |scope: u32| {
            std::net::SocketAddr::V6(std::net::SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 0, scope))
        };
        assert_eq!(device_of(&on(2)), 2);
        let l = Listener { ip: "fe80::1".parse().unwrap(), port: 80, dev: 2, queue: 0 };
        let none = HashMap::new();
        assert!(l.is_on(&on(2), group_device(&none, [], &on(2))));
        assert!(!l.is_on(&on(3), group_device(&none, [], &on(3))), "the same address on another interface");
        // A global address binds no device, whatever scope id it is given.
        let scoped = std::net::SocketAddr::V6(std::net::SocketAddrV6::new("2001:db8::1".parse().unwrap(), 80, 0, 5));
        assert_eq!(device_of(&scoped), 0);
        assert_eq!(device_of(&"127.0.0.1:80".parse().unwrap()), 0);
    }

    #[test]
    fn the_kernel_filters_by_port() {
        let ls: Vec<_> = (0..4).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let port = |i: usize| ls[i].local_addr().unwrap().port();
        let ports_of = |wanted: &[u16]| {
            let mut got: Vec<u16> = tcp_listeners(&[libc::AF_INET], wanted)
                .unwrap()
                .values()
                .map(|l| l.port)
                .filter(|p| (0..4).any(|i| port(i) == *p))
                .collect();
            got.sort();
            got
        };
        let sorted = |mut v: Vec<u16>| {
            v.sort();
            v
        };
        assert_eq!(ports_of(&[port(2)]), vec![port(2)]);
        assert_eq!(ports_of(&[port(0), port(3)]), sorted(vec![port(0), port(3)]));
        assert_eq!(ports_of(&[port(3), port(1), port(0)]), sorted(vec![port(0), port(1), port(3)]));
        assert_eq!(ports_of(&[]), sorted((0..4).map(port).collect()), "no filter: every listener");
        // a port nobody listens on: nothing of ours, and no error
        let free = (1024..u16::MAX).find(|p| (0..4).all(|i| port(i) != *p)).unwrap();
        assert!(ports_of(&[free]).is_empty());
        let many: Vec<u16> =
            (1024..u16::MAX).filter(|p| (0..4).all(|i| port(i) != *p)).take(200).chain([port(1)]).collect();
        assert_eq!(ports_of(&many), vec![port(1)], "a long filter still matches its last port");
    }
}
