//! The workers' calls: the first adopts the master's sockets, every other binds its own
//! (before dropping privileges); a process without a master opens and configures at once.

use std::ffi::c_int;

use super::guard;
use super::set::{reuseport_set, set_mut};

/// First worker, after fork, before dropping privileges: takes over the sockets inherited
/// from the master (the same open file descriptions; no new socket) and configures them
/// (buffers, deferred accept, fast open, keepalive).
///
/// Fails with -EINVAL when the set holds no inherited sockets (the master did not open, or
/// already released) or when called in the master itself, and -EBADF when an inherited fd
/// was closed or replaced between fork and this call; the set is then released (holding
/// nothing, the fds it no longer recognises left alone) and the worker may fall back to
/// reuseport_worker_bind(). The fds belong to the set.
#[no_mangle]
pub extern "C" fn reuseport_worker_adopt(set: *mut reuseport_set) -> c_int {
    guard("reuseport_worker_adopt", || set_mut(set)?.adopt().map(|_| 0))
}

/// Every worker but the first, after fork and **before dropping privileges**: opens and
/// configures its own SO_REUSEPORT socket for every spec, joining the group the master
/// opened. A reuseport group only admits sockets of the same effective uid, and ports
/// below 1024 need CAP_NET_BIND_SERVICE: after setuid() this fails with -EADDRINUSE or
/// -EACCES and a message that says so.
///
/// Call it in a set released by the master (-EALREADY when the set holds sockets: a worker
/// forked before the release inherited them; free the set or have the master release
/// first). All or nothing. The fds belong to the set.
#[no_mangle]
pub extern "C" fn reuseport_worker_bind(set: *mut reuseport_set) -> c_int {
    guard("reuseport_worker_bind", || set_mut(set)?.worker_bind().map(|_| 0))
}

/// A process without a master: open and configure every spec in one call. All or nothing.
/// The fds belong to the set.
#[no_mangle]
pub extern "C" fn reuseport_single_open(set: *mut reuseport_set) -> c_int {
    guard("reuseport_single_open", || set_mut(set)?.open_single().map(|_| 0))
}
