//! One listen socket: open it (socket, SO_REUSEPORT, bind, listen) and configure it
//! (buffers, deferred accept, fast open, keepalive). The lifecycle decides who does which.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, TcpKeepalive, Type};

use super::held::HeldSocket;
use super::portowner;
use crate::error::{Error, Result, Step};
use crate::log::{self, Level};
use crate::spec::{Keepalive, Options};
use crate::sys::procfs;
use crate::sys::socket::setsockopt_int;

/// Opens a reuseport listener on `addr` and applies nothing beyond what `bind` and `listen`
/// need (IPV6_V6ONLY, the backlog): this is the master's "unconfigured" socket.
///
/// The socket is close-on-exec and non-blocking, as nginx's listeners are.
pub(crate) fn open(addr: &SocketAddr, opts: &Options) -> Result<OwnedFd> {
    let name = addr.to_string();
    let sock = Socket::new(Domain::for_address(*addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| Error::sys(&e, Step::Socket, &name, socket_hint(&e)))?;
    let so = |e: io::Error, what: &str| Error::sys(&e, Step::Setsockopt, &name, what);
    // SO_REUSEADDR lets a new generation bind while old connections sit in TIME_WAIT.
    sock.set_reuse_address(true).map_err(|e| so(e, "SO_REUSEADDR"))?;
    sock.set_reuse_port(true)
        .map_err(|e| so(e, "SO_REUSEPORT is not supported by this kernel (Linux 3.9 or later needed)"))?;
    if addr.is_ipv6() {
        sock.set_only_v6(opts.ipv6only.unwrap_or(true)).map_err(|e| so(e, "IPV6_V6ONLY"))?;
    }
    sock.set_nonblocking(true).map_err(|e| so(e, "O_NONBLOCK"))?;
    sock.bind(&SockAddr::from(*addr)).map_err(|e| bind_error(&e, addr))?;
    let backlog = if opts.backlog < 0 { libc::SOMAXCONN } else { opts.backlog };
    sock.listen(backlog).map_err(|e| Error::sys(&e, Step::Listen, &name, ""))?;
    Ok(sock.into())
}

/// Applies the options that `open` leaves alone. Run by whoever will accept on the socket:
/// the first worker on the master's socket, every other worker on its own.
pub(crate) fn configure(fd: BorrowedFd<'_>, addr: &SocketAddr, opts: &Options) -> Result<()> {
    let sock = SockRef::from(&fd);
    let name = addr.to_string();
    let so = |e: io::Error, what: &str| Error::sys(&e, Step::Setsockopt, &name, what);
    {
        if let Some(n) = opts.rcvbuf {
            sock.set_recv_buffer_size(n as usize).map_err(|e| so(e, "SO_RCVBUF"))?;
            warn_if_capped(&name, "rcvbuf", n, sock.recv_buffer_size(), "net.core.rmem_max");
        }
        if let Some(n) = opts.sndbuf {
            sock.set_send_buffer_size(n as usize).map_err(|e| so(e, "SO_SNDBUF"))?;
            warn_if_capped(&name, "sndbuf", n, sock.send_buffer_size(), "net.core.wmem_max");
        }
        if opts.deferred {
            // nginx uses 1 s: a connection's time in the queue cannot be known, and with
            // syncookies it may bypass the deferred queue altogether.
            setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 1).map_err(|e| so(e, "TCP_DEFER_ACCEPT"))?;
        }
        if let Some(q) = opts.fastopen {
            setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, q as i32)
                .map_err(|e| so(e, "TCP_FASTOPEN (check net.ipv4.tcp_fastopen)"))?;
        }
        match opts.keepalive {
            Keepalive::Default => {}
            Keepalive::Off => sock.set_keepalive(false).map_err(|e| so(e, "SO_KEEPALIVE"))?,
            Keepalive::On { idle, intvl, cnt } => {
                sock.set_keepalive(true).map_err(|e| so(e, "SO_KEEPALIVE"))?;
                let mut ka = TcpKeepalive::new();
                if let Some(s) = idle {
                    ka = ka.with_time(std::time::Duration::from_secs(s.into()));
                }
                if let Some(s) = intvl {
                    ka = ka.with_interval(std::time::Duration::from_secs(s.into()));
                }
                if let Some(n) = cnt {
                    ka = ka.with_retries(n);
                }
                if idle.is_some() || intvl.is_some() || cnt.is_some() {
                    sock.set_tcp_keepalive(&ka).map_err(|e| so(e, "TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT"))?;
                }
            }
        }
        Ok(())
    }
}

/// Checks that an inherited socket is still the listener the master opened on `addr`: a
/// daemonizing step that closed or reused fds between fork and adopt must fail here, not
/// in accept().
pub(crate) fn verify_listener(held: &HeldSocket, addr: &SocketAddr) -> Result<()> {
    let fd = held.raw();
    let mismatch = |what: String| {
        Error::new(
            libc::EBADF,
            Step::Adopt,
            format!("{addr}: adopt: fd {fd} {what}: the inherited listen socket was closed or replaced between fork and adopt (do not close fds the library owns)"),
        )
    };
    if !held.is_intact() {
        return Err(mismatch(format!("is no longer socket inode {}", held.inode())));
    }
    let borrowed = held.borrow();
    let sock = SockRef::from(&borrowed);
    match sock.local_addr().ok().and_then(|a| a.as_socket()) {
        Some(a) if a == *addr => {}
        Some(a) => return Err(mismatch(format!("is bound to {a}"))),
        None => return Err(mismatch("is not an IP socket".into())),
    }
    if !sock.is_listener().unwrap_or(false) {
        return Err(mismatch("is not listening".into()));
    }
    Ok(())
}

/// The address a socket is bound to (the kernel's choice when the spec said port 0).
pub(crate) fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    SockRef::from(&fd).local_addr()?.as_socket().ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

/// The kernel silently caps buffer sizes at a sysctl (and doubles what it keeps); an
/// operator who asked for more should hear about it.
fn warn_if_capped(name: &str, what: &str, wanted: u32, got: io::Result<usize>, sysctl: &str) {
    if let Ok(got) = got {
        if got < 2 * wanted as usize {
            log::emit(
                Level::Warn,
                &format!(
                    "{name}: {what}={wanted} was capped to {} by {sysctl}; raise it to get the size asked for",
                    got / 2
                ),
            );
        }
    }
}

fn socket_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => "this process is out of file descriptors: raise RLIMIT_NOFILE (worker_rlimit_nofile)",
        Some(libc::ENFILE) => "the system is out of file descriptors: raise fs.file-max",
        Some(libc::EAFNOSUPPORT) => "this address family is disabled on this host (is IPv6 off?)",
        _ => "",
    }
}

/// Explains a failed bind: who holds the port, and what the caller can do.
fn bind_error(e: &io::Error, addr: &SocketAddr) -> Error {
    let name = addr.to_string();
    let port = addr.port();
    let hint = match e.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            let euid = nix::unistd::geteuid().as_raw();
            let holders = portowner::holders(port);
            match holders.iter().find(|h| h.uid != euid) {
                Some(h) => format!(
                    "the port is held by a socket of uid {} and this process runs as uid {euid}; a reuseport group only admits sockets of the same effective uid: workers must bind (reuseport_worker_bind) before dropping privileges",
                    h.uid
                ),
                None if !holders.is_empty() => format!(
                    "a socket without SO_REUSEPORT holds port {port} (inode {}): another server, or a listener opened without reuseport; stop it or choose another port",
                    holders[0].inode
                ),
                None => "another socket holds this address without SO_REUSEPORT".to_string(),
            }
        }
        Some(libc::EACCES) => format!(
            "port {port} is privileged (below net.ipv4.ip_unprivileged_port_start = {}) and this process lacks CAP_NET_BIND_SERVICE: workers must bind (reuseport_worker_bind) before dropping privileges",
            procfs::unprivileged_port_start()
        ),
        Some(libc::EADDRNOTAVAIL) => "no interface of this host (network namespace) has this address".to_string(),
        _ => String::new(),
    };
    Error::sys(e, Step::Bind, &name, &hint)
}
