//! The master's calls: take over from the previous generation's set (reload), open the
//! listen sockets before forking, release them right after forking the first worker.

use std::ffi::c_int;

use super::guard;
use super::set::{reuseport_set, set_mut, set_ref};
use crate::error::Error;

/// Master, on a reload (or an old master reverting an upgrade), after adding `next`'s
/// specs and before opening it:
/// `next` takes over from `prev`, the set it replaces, what carries from one generation
/// to the next: the migration program, the steering context of every address both sets
/// have (old and new workers share one slot table, so a retiring old worker sees its
/// successors coming and leaves only once they can take its connections), and the close
/// token (the sockets of every generation of this master close in turn). Addresses only
/// `next` has get their own at open; steering follows `next`'s own settings.
///
/// `prev` is not changed; free it when its workers are gone, before or after opening
/// `next`. Across exec (a binary upgrade) nothing but the program can be handed over:
/// use reuseport_set_set_program_fd() in the new binary. -EALREADY when `next` holds sockets,
/// -EINVAL when it has no specs yet.
#[no_mangle]
pub extern "C" fn reuseport_set_inherit(next: *mut reuseport_set, prev: *const reuseport_set) -> c_int {
    guard("reuseport_set_inherit", || {
        if std::ptr::eq(next, prev) {
            return Err(Error::invalid("next and prev are the same set"));
        }
        let prev = set_ref(prev)?;
        set_mut(next)?.inherit(prev).map(|_| 0)
    })
}

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
