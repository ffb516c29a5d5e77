//! `reuseport_set`: the listeners of one server and where they stand in the lifecycle.

use std::ffi::{c_char, c_int};
use std::os::fd::AsRawFd;

use super::abi::write_text;
use super::{c_str, guard, guard_or, guard_query};
use crate::error::{Error, Step};
use crate::set::{Listener, Role, Set};

/// An opaque set of listen specs and the listen sockets this process holds for them.
///
/// A set is plain memory: after fork() the child has its own copy, holding the same fds.
/// Each process calls the function of its role on its copy and frees it when done.
pub struct reuseport_set {
    pub(crate) set: Set,
}

/// Where a set stands in the lifecycle (reuseport_set_get_role()).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum reuseport_role {
    /// Specs only, no sockets.
    REUSEPORT_ROLE_EMPTY = 0,
    /// The master holds unconfigured sockets (after reuseport_master_open()).
    REUSEPORT_ROLE_MASTER_OPEN = 1,
    /// The master closed its sockets (after reuseport_master_release()); specs and the
    /// ports the kernel chose are kept for the next open and for workers forked from now on.
    REUSEPORT_ROLE_RELEASED = 2,
    /// The first worker took over the master's sockets (after reuseport_worker_adopt()).
    REUSEPORT_ROLE_ADOPTED = 3,
    /// A worker holds its own sockets (after reuseport_worker_bind()).
    REUSEPORT_ROLE_BOUND = 4,
    /// One process opened and configured (after reuseport_single_open()).
    REUSEPORT_ROLE_SINGLE = 5,
}

impl From<Role> for reuseport_role {
    fn from(r: Role) -> Self {
        match r {
            Role::Empty => reuseport_role::REUSEPORT_ROLE_EMPTY,
            Role::MasterOpen => reuseport_role::REUSEPORT_ROLE_MASTER_OPEN,
            Role::Released => reuseport_role::REUSEPORT_ROLE_RELEASED,
            Role::Adopted => reuseport_role::REUSEPORT_ROLE_ADOPTED,
            Role::Bound => reuseport_role::REUSEPORT_ROLE_BOUND,
            Role::Single => reuseport_role::REUSEPORT_ROLE_SINGLE,
        }
    }
}

pub(crate) fn set_ref<'a>(p: *const reuseport_set) -> crate::Result<&'a Set> {
    // SAFETY: non-NULL pointers come from reuseport_set_new() and are not yet freed (the
    // caller's contract, as with free()).
    unsafe { p.as_ref() }.map(|s| &s.set).ok_or_else(|| Error::invalid("the set is NULL"))
}

pub(crate) fn set_mut<'a>(p: *mut reuseport_set) -> crate::Result<&'a mut Set> {
    // SAFETY: as in set_ref.
    unsafe { p.as_mut() }.map(|s| &mut s.set).ok_or_else(|| Error::invalid("the set is NULL"))
}

pub(crate) fn listener_at(set: &Set, index: usize) -> crate::Result<&Listener> {
    set.listeners().get(index).ok_or_else(|| {
        Error::new(
            libc::ENOENT,
            Step::Lifecycle,
            format!("index {index} is out of range (the set has {})", set.listeners().len()),
        )
    })
}

/// Creates an empty set. Returns NULL only when out of memory.
///
/// Who: the master (or a single process), before anything else. Free it with
/// reuseport_set_free().
#[no_mangle]
pub extern "C" fn reuseport_set_new() -> *mut reuseport_set {
    guard_or("reuseport_set_new", std::ptr::null_mut(), || {
        Ok(Box::into_raw(Box::new(reuseport_set { set: Set::new() })))
    })
}

/// Frees a set and closes every listen socket it holds **in this process** (copies in
/// other processes are theirs). NULL is a no-op. Do not use the set afterwards.
#[no_mangle]
pub extern "C" fn reuseport_set_free(set: *mut reuseport_set) {
    guard_or("reuseport_set_free", (), || {
        if !set.is_null() {
            // SAFETY: a pointer from reuseport_set_new(), freed once (the caller's contract).
            drop(unsafe { Box::from_raw(set) });
        }
        Ok(())
    })
}

/// Adds a listen spec in nginx's `listen` syntax: an address (`127.0.0.1:8080`, `*:80`,
/// `8080`, `[::1]:8443`, `localhost:8080`; no port means 80, port 0 lets the kernel choose)
/// and options: `backlog=N` (-1: the system maximum), `rcvbuf=SIZE`, `sndbuf=SIZE` (k, m
/// suffixes), `deferred` (TCP_DEFER_ACCEPT of 1 s, as nginx), `fastopen=N`,
/// `so_keepalive=on|off|[idle]:[intvl]:[cnt]`, `ipv6only=on|off` (IPv6 only; default on).
/// `reuseport` and a trailing `;` are accepted.
///
/// Returns the number of listeners added (a host name adds one per address it resolves
/// to), or -EINVAL with a message quoting the bad token. -EALREADY when the set holds
/// sockets: add specs before reuseport_master_open(), or after release (a reload).
///
/// Who: the master (or a single process), before opening. Host names are resolved here,
/// once; workers reuse the addresses.
#[no_mangle]
pub extern "C" fn reuseport_set_add(set: *mut reuseport_set, spec: *const c_char) -> c_int {
    guard("reuseport_set_add", || {
        let set = set_mut(set)?;
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let spec = unsafe { c_str(spec, "the listen spec") }?;
        set.add_spec(spec).map(|n| n as c_int)
    })
}

/// Number of listeners in the set (held or not), or -EINVAL for NULL.
#[no_mangle]
pub extern "C" fn reuseport_set_get_count(set: *const reuseport_set) -> c_int {
    guard_query("reuseport_set_get_count", || Ok(set_ref(set)?.listeners().len() as c_int))
}

/// The listen fd of listener `index` in this process, borrowed: the set still owns it and
/// closes it on release or free; never close it yourself. -ENOENT when `index` is out of
/// range, -EBADF when this process holds no socket for it (not opened yet, or released).
#[no_mangle]
pub extern "C" fn reuseport_listener_get_fd(set: *const reuseport_set, index: usize) -> c_int {
    guard_query("reuseport_listener_get_fd", || {
        let set = set_ref(set)?;
        let l = listener_at(set, index)?;
        set.fd(index).map(|fd| fd.as_raw_fd()).ok_or_else(|| {
            Error::new(
                libc::EBADF,
                Step::Lifecycle,
                format!("{}: this process holds no socket for it ({})", l.addr, set.role().as_str()),
            )
        })
    })
}

/// Writes the canonical spec text of listener `index` (numeric address, the port actually
/// bound, the options that differ from the defaults: `127.0.0.1:40123 backlog=1024
/// deferred`) into `buf` of `len` bytes, always NUL-terminated when `len` > 0, like
/// snprintf(). Returns the full length of the text (excluding the NUL): a result >= `len`
/// means it was cut. `buf` may be NULL when `len` is 0. -ENOENT for a bad index.
#[no_mangle]
pub extern "C" fn reuseport_listener_get_spec(
    set: *const reuseport_set,
    index: usize,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    guard_query("reuseport_listener_get_spec", || {
        let set = set_ref(set)?;
        let l = listener_at(set, index)?;
        // SAFETY: NULL with len 0, or len writable bytes (the caller's contract).
        unsafe { write_text(buf, len, &l.spec_text()) }
    })
}

/// The set's role, a reuseport_role value, or -EINVAL for NULL.
#[no_mangle]
pub extern "C" fn reuseport_set_get_role(set: *const reuseport_set) -> c_int {
    guard_query("reuseport_set_get_role", || Ok(reuseport_role::from(set_ref(set)?.role()) as c_int))
}

/// A static name for a reuseport_role value ("master-open", "adopted"...), "invalid" for
/// anything else. For logs.
#[no_mangle]
pub extern "C" fn reuseport_role_name(role: c_int) -> *const c_char {
    let found = Role::ALL.into_iter().find(|r| reuseport_role::from(*r) as c_int == role);
    found.map_or(c"invalid", Role::name).as_ptr()
}

/// The library's version, "MAJOR.MINOR.PATCH". Static.
#[no_mangle]
pub extern "C" fn reuseport_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}
