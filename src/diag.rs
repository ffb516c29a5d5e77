//! The accept queue of every TCP listener in this network namespace, from the kernel's
//! sock_diag interface (what `ss -lt` shows as Recv-Q). Needs no privilege; sockets are
//! told apart by inode, which is how the watch recognises a worker's socket without
//! holding it.

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
pub struct Listener {
    pub port: u16,
    /// Connections waiting in the accept queue.
    pub queue: u32,
}

/// Every TCP listener of `families` (AF_INET, AF_INET6) in this namespace, by inode.
pub fn tcp_listeners(families: &[i32]) -> io::Result<HashMap<u64, Listener>> {
    // SAFETY: a plain socket(2) call.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut out = HashMap::new();
    for &family in families {
        dump(&sock, family as u8, &mut out)?;
    }
    Ok(out)
}

fn dump(sock: &OwnedFd, family: u8, out: &mut HashMap<u64, Listener>) -> io::Result<()> {
    let req = Request {
        len: std::mem::size_of::<Request>() as u32,
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
    // SAFETY: sending the request struct's bytes; the kernel is the default destination.
    let sent = unsafe {
        libc::send(sock.as_raw_fd(), &req as *const Request as *const libc::c_void, std::mem::size_of::<Request>(), 0)
    };
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
                    out.insert(u32_at(m + 68) as u64, Listener { port, queue: u32_at(m + 56) });
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// Whether another TCP listener than socket `inode` listens on `addr`'s port in its
/// address family (a running group to join). False when sock_diag cannot be read.
pub fn others_on_port(addr: &std::net::SocketAddr, inode: u64) -> bool {
    let family = if addr.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
    tcp_listeners(&[family]).is_ok_and(|ls| ls.iter().any(|(ino, l)| l.port == addr.port() && *ino != inode))
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
        let all = tcp_listeners(&[libc::AF_INET]).unwrap();
        let me = all.get(&ino).expect("our listener is listed");
        assert_eq!(me.port, port);
        assert_eq!(me.queue, 2, "two connections wait to be accepted");
    }
}
