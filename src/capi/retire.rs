//! reuseport_retire(): a worker leaving its groups without resetting a client.

use std::ffi::{c_int, c_uint, c_void};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use super::guard;
use super::set::{reuseport_set, set_mut};
use crate::error::Error;
use crate::set::{DrainTiming, Progress};

/// Receives a connection a draining retire accepted: `fd` (non-blocking, close-on-exec)
/// now belongs to the callee, who serves it; `index` is the listener it came from.
/// Return 0 to take it, anything else to refuse it (the library then closes it).
pub type reuseport_accept_fn = Option<unsafe extern "C" fn(fd: c_int, index: usize, user: *mut c_void) -> c_int>;

/// reuseport_set_set_drain() flag: keep the listen backlog while draining (by default it is
/// shrunk to 0 so that new handshakes use SYN cookies, which survive the close).
pub const REUSEPORT_DRAIN_KEEP_BACKLOG: c_uint = 1;

/// Sets how a draining retire waits: it stops once the queue has stayed empty for
/// `grace_ms` (default 20), or after `max_ms` (default 1000). `flags`: 0 or
/// REUSEPORT_DRAIN_KEEP_BACKLOG (listeners with `deferred` always keep theirs: their
/// connections need accept-queue room when their data arrives). -EINVAL when grace is 0
/// or above max.
#[no_mangle]
pub extern "C" fn reuseport_set_set_drain(
    set: *mut reuseport_set,
    grace_ms: c_uint,
    max_ms: c_uint,
    flags: c_uint,
) -> c_int {
    guard("reuseport_set_set_drain", || {
        if flags & !REUSEPORT_DRAIN_KEEP_BACKLOG != 0 {
            return Err(Error::invalid(format!("unknown drain flags {flags:#x}")));
        }
        set_mut(set)?
            .set_drain(DrainTiming {
                grace: Duration::from_millis(grace_ms.into()),
                max: Duration::from_millis(max_ms.into()),
                shrink_backlog: flags & REUSEPORT_DRAIN_KEEP_BACKLOG == 0,
            })
            .map(|_| 0)
    })
}

/// A worker leaving its groups (reload, upgrade, graceful quit): call it instead of
/// closing the listen sockets yourself, and stop accepting from them.
///
/// With migration (bpf, sysctl) it closes them at once (the kernel moves their queues to
/// the surviving members) and returns 0. With drain it accepts what is queued, passing
/// each connection to `on_accept` (required then), and returns a positive number of
/// milliseconds after which to call it again (sooner when a listen fd is readable); it
/// returns 0 once the queue has stayed empty for the grace period, or the maximum has
/// passed, and every socket is closed. Keep serving your other connections between calls.
///
/// The set is then released: it holds no socket, and the fds reuseport_listener_get_fd() returned
/// are closed. -EINVAL when the set holds no sockets, or drain needs a callback and has
/// none. Who: any process holding sockets (first worker, other worker, single).
#[no_mangle]
pub extern "C" fn reuseport_retire(
    set: *mut reuseport_set,
    on_accept: reuseport_accept_fn,
    user: *mut c_void,
) -> c_int {
    guard("reuseport_retire", || {
        let set = set_mut(set)?;
        if on_accept.is_none() && set.retire_hands_over() {
            // Refuse before accepting anything: an accepted connection without a taker
            // could only be closed, resetting its client.
            return Err(Error::invalid(
                "this set drains (strategy drain): pass an on_accept callback to take the queued connections",
            ));
        }
        let mut hand_over = |fd: OwnedFd, index: usize| match on_accept {
            Some(f) => {
                let raw = fd.into_raw_fd();
                // SAFETY: the host's callback, handed a connection fd it now owns.
                let taken = unsafe { f(raw, index, user) } == 0;
                // SAFETY: refused: the fd is still ours.
                (!taken).then(|| unsafe { OwnedFd::from_raw_fd(raw) })
            }
            None => Some(fd),
        };
        let progress = set.retire(&mut hand_over)?;
        Ok(match progress {
            Progress::Done { .. } => 0,
            Progress::Again(d) => d.as_millis().clamp(1, c_int::MAX as u128) as c_int,
        })
    })
}
