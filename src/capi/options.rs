//! The plain C struct form of listen options, for callers that build them in code.

use std::ffi::c_int;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use super::abi::{init_sized, read_sized};
use super::guard;
use super::set::{reuseport_set, set_mut};
use crate::error::Error;
use crate::spec::{Keepalive, Options, DEFAULT_BACKLOG};

/// Options of one listener, the struct form of the spec text's options. Fill it with
/// reuseport_listen_options_init(&opts, sizeof opts) first, then change what you need: 0
/// (or -1 where said) means "leave the system default". The struct may grow at its end;
/// `sz` tells the library which version the caller has (see the ABI rules at the top).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct reuseport_listen_options {
    /// sizeof(struct reuseport_listen_options) as the caller compiled it; set by
    /// reuseport_listen_options_init().
    pub sz: usize,
    /// listen() backlog; default 511 (nginx's); -1 for the system maximum.
    pub backlog: c_int,
    /// SO_RCVBUF in bytes; 0 leaves the default.
    pub rcvbuf: c_int,
    /// SO_SNDBUF in bytes; 0 leaves the default.
    pub sndbuf: c_int,
    /// Non-zero sets TCP_DEFER_ACCEPT (nginx's `deferred`).
    pub deferred: c_int,
    /// TCP_FASTOPEN queue length; 0 leaves fast open off.
    pub fastopen: c_int,
    /// SO_KEEPALIVE: -1 leaves the default, 0 forces off, 1 on.
    pub keepalive: c_int,
    /// TCP_KEEPIDLE seconds (with keepalive = 1); 0 leaves the default.
    pub keepidle: c_int,
    /// TCP_KEEPINTVL seconds (with keepalive = 1); 0 leaves the default.
    pub keepintvl: c_int,
    /// TCP_KEEPCNT probes (with keepalive = 1); 0 leaves the default.
    pub keepcnt: c_int,
    /// IPV6_V6ONLY for IPv6 addresses: -1 default (on, as nginx), 0 off, 1 on. Must be -1
    /// for IPv4 addresses.
    pub ipv6only: c_int,
}

/// The struct's size in the first release (0.1): `sz` may not be smaller.
pub const REUSEPORT_LISTEN_OPTIONS_SIZE_V1: usize = 48;
const _: () = assert!(std::mem::size_of::<reuseport_listen_options>() >= REUSEPORT_LISTEN_OPTIONS_SIZE_V1);

const DEFAULTS: reuseport_listen_options = reuseport_listen_options {
    sz: std::mem::size_of::<reuseport_listen_options>(),
    backlog: DEFAULT_BACKLOG,
    rcvbuf: 0,
    sndbuf: 0,
    deferred: 0,
    fastopen: 0,
    keepalive: -1,
    keepidle: 0,
    keepintvl: 0,
    keepcnt: 0,
    ipv6only: -1,
};

/// Fills `opts` with the defaults (nginx's: backlog 511, everything else left alone) and
/// `opts->sz` with `sz`, which must be `sizeof *opts`:
/// `reuseport_listen_options_init(&opts, sizeof opts)`. Returns 0, or -EINVAL for NULL or
/// a size below the first release's. Threads: any thread, any time.
#[no_mangle]
pub extern "C" fn reuseport_listen_options_init(opts: *mut reuseport_listen_options, sz: usize) -> c_int {
    guard("reuseport_listen_options_init", || {
        // SAFETY: NULL or a pointer to sz writable bytes (the caller's contract).
        unsafe { init_sized(opts, sz, REUSEPORT_LISTEN_OPTIONS_SIZE_V1, DEFAULTS, "opts") }.map(|_| 0)
    })
}

fn non_negative(name: &str, v: c_int) -> crate::Result<Option<u32>> {
    match v {
        0 => Ok(None),
        v if v > 0 => Ok(Some(v as u32)),
        v => Err(Error::invalid(format!("{name} = {v}: use 0 for the default or a positive value"))),
    }
}

impl TryFrom<&reuseport_listen_options> for Options {
    type Error = Error;

    fn try_from(o: &reuseport_listen_options) -> crate::Result<Options> {
        let keepalive = match o.keepalive {
            -1 if o.keepidle == 0 && o.keepintvl == 0 && o.keepcnt == 0 => Keepalive::Default,
            -1 => {
                return Err(Error::invalid("keepidle/keepintvl/keepcnt are set but keepalive is -1: set keepalive = 1"))
            }
            0 if o.keepidle == 0 && o.keepintvl == 0 && o.keepcnt == 0 => Keepalive::Off,
            0 => {
                return Err(Error::invalid(
                    "keepidle/keepintvl/keepcnt are set but keepalive is 0 (off): set keepalive = 1",
                ))
            }
            1 => Keepalive::On {
                idle: non_negative("keepidle", o.keepidle)?,
                intvl: non_negative("keepintvl", o.keepintvl)?,
                cnt: non_negative("keepcnt", o.keepcnt)?,
            },
            v => return Err(Error::invalid(format!("keepalive = {v}: use -1 (default), 0 (off) or 1 (on)"))),
        };
        let ipv6only = match o.ipv6only {
            -1 => None,
            0 => Some(false),
            1 => Some(true),
            v => return Err(Error::invalid(format!("ipv6only = {v}: use -1 (default), 0 (off) or 1 (on)"))),
        };
        Ok(Options {
            backlog: o.backlog,
            rcvbuf: non_negative("rcvbuf", o.rcvbuf)?,
            sndbuf: non_negative("sndbuf", o.sndbuf)?,
            deferred: o.deferred != 0,
            fastopen: non_negative("fastopen", o.fastopen)?,
            keepalive,
            ipv6only,
        })
    }
}

/// Reads a sockaddr_in or sockaddr_in6 of `len` bytes.
///
/// # Safety
/// `addr` is NULL or points at `len` readable bytes.
unsafe fn read_sockaddr(addr: *const libc::sockaddr, len: libc::socklen_t) -> crate::Result<SocketAddr> {
    if addr.is_null() {
        return Err(Error::invalid("addr is NULL"));
    }
    let len = len as usize;
    if len < std::mem::size_of::<libc::sa_family_t>() {
        return Err(Error::invalid(format!("addrlen {len} is too short for any address")));
    }
    // SAFETY: addr points at len >= sizeof(sa_family_t) readable bytes (the caller's
    // contract); read_unaligned copes with any alignment.
    let family = unsafe { std::ptr::read_unaligned(std::ptr::addr_of!((*addr).sa_family)) } as c_int;
    match family {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: len covers a whole sockaddr_in (checked above).
            let a = unsafe { std::ptr::read_unaligned(addr as *const libc::sockaddr_in) };
            Ok(SocketAddr::V4(SocketAddrV4::new(u32::from_be(a.sin_addr.s_addr).into(), u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: len covers a whole sockaddr_in6 (checked above).
            let a = unsafe { std::ptr::read_unaligned(addr as *const libc::sockaddr_in6) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        libc::AF_INET => Err(Error::invalid(format!("addrlen {len} is too short for AF_INET (sockaddr_in)"))),
        libc::AF_INET6 => Err(Error::invalid(format!("addrlen {len} is too short for AF_INET6 (sockaddr_in6)"))),
        libc::AF_UNIX => Err(Error::invalid("AF_UNIX addresses have no reuseport groups: use AF_INET or AF_INET6")),
        f => Err(Error::invalid(format!("address family {f} is not supported: use AF_INET or AF_INET6"))),
    }
}

/// Adds a listener from a `struct sockaddr_in` / `sockaddr_in6` and options (NULL: the
/// defaults; else filled by reuseport_listen_options_init()). Port 0 lets the kernel choose at reuseport_master_open(). Returns 1 (one
/// listener added) or -EINVAL with a message naming the bad field; -EALREADY when the set
/// holds sockets. Who and when: as reuseport_set_add().
#[no_mangle]
pub extern "C" fn reuseport_set_add_addr(
    set: *mut reuseport_set,
    addr: *const libc::sockaddr,
    addrlen: libc::socklen_t,
    opts: *const reuseport_listen_options,
) -> c_int {
    guard("reuseport_set_add_addr", || {
        let set = set_mut(set)?;
        // SAFETY: the caller passes a sockaddr of addrlen bytes (or NULL, refused).
        let addr = unsafe { read_sockaddr(addr, addrlen) }?;
        let options = if opts.is_null() {
            Options::default()
        } else {
            // SAFETY: a struct filled by reuseport_listen_options_init(), of opts->sz bytes.
            let o = unsafe { read_sized(opts, REUSEPORT_LISTEN_OPTIONS_SIZE_V1, DEFAULTS, "opts") }?;
            Options::try_from(&o).map_err(|e| Error::invalid(format!("{addr}: {}", e.message)))?
        };
        set.add_addr(addr, options).map(|_| 1)
    })
}
