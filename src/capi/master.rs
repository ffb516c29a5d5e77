//! The master's calls: open the listen sockets before forking, release them right after
//! forking the first worker.

use std::ffi::c_int;

use super::guard;
use super::set::{reuseport_set, set_mut};

/// Master, before forking: for every spec, socket (SOCK_CLOEXEC, non-blocking) +
/// SO_REUSEADDR + SO_REUSEPORT (+ IPV6_V6ONLY) + bind + listen(backlog). No other option is
/// set: the first worker configures these sockets when it adopts them.
///
/// Connections that arrive before the first worker adopts the sockets wait in their
/// queue and are accepted by that worker (with the options it sets from then on).
///
/// A spec with port 0 gets the port the kernel chose; reuseport_listener_get_spec() shows it and
/// every later socket of the group binds it. Also the call to open again after
/// reuseport_master_release() (reload, or an old master reverting an upgrade).
///
/// All or nothing: on failure every socket this call opened is closed. Errors: -EADDRINUSE
/// (the message says whether a socket without SO_REUSEPORT or another user's group holds
/// the port), -EACCES (privileged port), -EALREADY (the set already holds sockets).
/// The fds belong to the set.
#[no_mangle]
pub extern "C" fn reuseport_master_open(set: *mut reuseport_set) -> c_int {
    guard("reuseport_master_open", || set_mut(set)?.master_open().map(|_| 0))
}

/// Master, right after forking the first worker: closes every listen socket of the set in
/// this process, keeping the specs and resolved ports. The group stays alive through the
/// first worker's copies. -EALREADY when called twice, -EINVAL before any open.
///
/// Workers forked after this call bind their own sockets with reuseport_worker_bind().
/// A worker may call it too, to close its sockets and leave the group while keeping the
/// set (it may then bind again). A socket whose fd was closed or replaced outside the
/// library is not closed again (a warning is logged).
#[no_mangle]
pub extern "C" fn reuseport_master_release(set: *mut reuseport_set) -> c_int {
    guard("reuseport_master_release", || set_mut(set)?.release().map(|_| 0))
}
