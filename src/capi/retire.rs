//! reuseport_retire(): a worker leaving its groups without resetting a client.

use std::ffi::{c_int, c_uint, c_void};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use super::set::{reuseport_set, set_mut, set_ref};
use super::{guard, guard_query};
use crate::error::{Error, Step};
use crate::set::{DrainTiming, Progress};

/// Receives a connection a retire accepted (a drain's, or one that arrived while the
/// sockets left the steering's choice): `fd` (non-blocking, close-on-exec) now belongs to
/// the callee, who serves it; `index` is the listener it came from.
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
/// closing the listen sockets yourself, and stop accepting from them yourself.
///
/// It never blocks. It returns 0 when every listen socket is closed (the set is then
/// released: it holds no socket, and the fds reuseport_listener_get_fd() returned are closed), or
/// a positive number of milliseconds after which to call it again: sooner when a listen
/// fd, or the fd reuseport_set_get_retire_fd() returns, is readable. Keep serving the connections
/// you already accepted between calls, from your event loop or a timer.
///
/// What it waits for, without blocking: with steering, still in the program's choice and
/// at most 300 ms, that a sibling is eligible when one is coming, and that a reload's new
/// generation can take over (as many of its workers eligible as older ones still in the
/// choice, or all of it in); out of the choice, that handshakes that chose this socket
/// complete (10 ms); the close token, so that the sockets of one master close in
/// turn (at most 200 ms, should a holder have died); 10 ms after its close, before the
/// next process may close. With migration (bpf, sysctl) the kernel then moves the queues
/// to the surviving members. With drain it accepts what is queued until the queue has
/// stayed empty for the grace period, or the maximum has passed, then closes.
///
/// `on_accept` receives each connection accepted on the way: required with drain;
/// optional with migration, where it takes what arrives before the close (served at once
/// rather than after migrating). -EINVAL when the set holds no sockets, or drain needs a
/// callback and has none. Who: any process holding sockets (first worker, other worker,
/// single).
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
        let progress = match on_accept {
            Some(f) => {
                let mut hand_over = |fd: OwnedFd, index: usize| {
                    let raw = fd.into_raw_fd();
                    // SAFETY: the host's callback, handed a connection fd it now owns.
                    let taken = unsafe { f(raw, index, user) } == 0;
                    // SAFETY: refused: the fd is still ours.
                    (!taken).then(|| unsafe { OwnedFd::from_raw_fd(raw) })
                };
                set.retire(Some(&mut hand_over))?
            }
            None => set.retire(None)?,
        };
        Ok(match progress {
            Progress::Done { .. } => 0,
            Progress::Again(d) => d.as_millis().clamp(1, c_int::MAX as u128) as c_int,
        })
    })
}

/// While reuseport_retire() waits for its turn to close: an fd that becomes readable when
/// the turn may be free (poll it for POLLIN, or add it to epoll until the next call),
/// borrowed: the set owns it. -ENOENT when the wait is a timer only (or no retire is under
/// way): use the milliseconds reuseport_retire() returned. Who: the process retiring.
#[no_mangle]
pub extern "C" fn reuseport_set_get_retire_fd(set: *const reuseport_set) -> c_int {
    guard_query("reuseport_set_get_retire_fd", || {
        set_ref(set)?.retire_poll_fd().ok_or_else(|| {
            Error::new(libc::ENOENT, Step::Lifecycle, "no retire is waiting on an fd: wait for the time it returned")
        })
    })
}
