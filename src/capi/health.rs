//! Health-aware steering: the workers' heartbeat, the master's watch, and what each slot
//! of a group is doing.

use std::ffi::{c_int, c_uint, c_ulonglong};
use std::time::Duration;

use super::abi::{check_out_size, write_out};
use super::set::{listener_at, reuseport_set, set_mut, set_ref};
use super::{guard, guard_query};
use crate::error::{Error, Step};
use crate::steering::SlotState;

/// What a worker's slot in a steered group is doing (reuseport_listener_get_slots()).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum reuseport_slot_state {
    /// Claimed; its socket is not in the steering map yet.
    REUSEPORT_SLOT_JOINING = 0,
    /// Gets its share of new connections.
    REUSEPORT_SLOT_HEALTHY = 1,
    /// Connections waited on it for the threshold without a heartbeat: it gets no new
    /// connections, and what it had queued was moved to its siblings (when the master may).
    REUSEPORT_SLOT_STALLED = 2,
    /// Its heartbeat moves but its accept queue kept growing: no new connections until the
    /// queue halves.
    REUSEPORT_SLOT_OVERLOADED = 3,
    /// Its process is leaving the group (reuseport_retire()).
    REUSEPORT_SLOT_RETIRING = 4,
}

/// One slot of a steered group, as reuseport_listener_get_slots() writes it. The struct may
/// grow at its end: the caller passes its sizeof (see the ABI rules at the top).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct reuseport_slot {
    /// The slot's index in the group's steering map.
    pub slot: c_int,
    /// The process holding it.
    pub pid: c_int,
    /// A reuseport_slot_state value.
    pub state: c_int,
    /// Its accept queue as the master's watch last saw it (0 outside the master).
    pub queue: c_uint,
    /// Heartbeats so far (0: its server does not call reuseport_heartbeat(); it is then
    /// never judged stalled).
    pub beats: c_ulonglong,
}

fn state_code(s: SlotState) -> reuseport_slot_state {
    match s {
        SlotState::Joining => reuseport_slot_state::REUSEPORT_SLOT_JOINING,
        SlotState::Healthy => reuseport_slot_state::REUSEPORT_SLOT_HEALTHY,
        SlotState::Stalled => reuseport_slot_state::REUSEPORT_SLOT_STALLED,
        SlotState::Overloaded => reuseport_slot_state::REUSEPORT_SLOT_OVERLOADED,
        SlotState::Retiring => reuseport_slot_state::REUSEPORT_SLOT_RETIRING,
    }
}

/// Sets how long connections may wait on a worker whose heartbeat stands still before new
/// connections are steered around it and its queue is moved (default 50 ms). 0 turns
/// those health verdicts off, not the steering program: new connections still go to live
/// workers' sockets only, never to one that is leaving (that closes a kernel race in which
/// a handshake completing while its listener closes is reset), and reuseport_watch() then
/// asks for a tick once a second, to free dead workers' slots. The threshold is read by
/// the master's reuseport_watch(). Who: the master, before opening (or any time, to change
/// the threshold).
#[no_mangle]
pub extern "C" fn reuseport_set_set_health_threshold(set: *mut reuseport_set, ms: c_uint) -> c_int {
    guard("reuseport_set_set_health_threshold", || {
        set_mut(set)?.set_health_threshold(Duration::from_millis(ms.into()));
        Ok(0)
    })
}

/// How many workers per generation the server runs at most (nginx: worker_processes):
/// the steering table the master creates for each address then has two generations'
/// worth of slots (a reload's or an upgrade's new workers start while the old ones
/// drain). 0, or not calling it: 4,096 slots (2,048 workers per generation). A worker
/// that finds no free slot still gets its share of connections (the group falls back to
/// the kernel's hash while it runs, and the log says so). Returns 0, or -EINVAL for NULL.
/// Who: the master, before its first reuseport_master_open() (a reload's set shares the
/// table created then).
#[no_mangle]
pub extern "C" fn reuseport_set_set_max_workers(set: *mut reuseport_set, workers: c_uint) -> c_int {
    guard("reuseport_set_set_max_workers", || {
        set_mut(set)?.set_max_workers(workers as usize);
        Ok(0)
    })
}

/// A worker's sign of life: call it once per event-loop iteration (or timer tick), at the
/// top of the iteration, before the wait for events. It is an atomic increment in memory
/// shared with the master, no system call. A worker that never calls it is never judged
/// stalled. Once a worker of a group has called it, a worker joining later (a reload's)
/// gets new connections from its own first call on, when its loop runs, not from the
/// moment its socket joins, unless no other worker of the group can take them (at most a
/// second later if it never calls it, the master's watch permitting). Returns 0, or
/// -EINVAL for NULL. Who: workers.
#[no_mangle]
pub extern "C" fn reuseport_heartbeat(set: *const reuseport_set) -> c_int {
    guard("reuseport_heartbeat", || {
        set_ref(set)?.heartbeat();
        Ok(0)
    })
}

/// reuseport_heartbeat() with the worker's load figure, its open connections (or any
/// figure that grows with its backlog of work): of the eligible workers it compares (four
/// neighbours in its list, chosen by the connection's hash), the steering program gives
/// a new connection to the one whose figure, plus the connections sent to it since its
/// last heartbeat, is lowest. Without it the figure is 0 and only the latter
/// counts. Same cost as reuseport_heartbeat(): a few stores in shared memory. Returns 0,
/// or -EINVAL for NULL. Who: workers, instead of reuseport_heartbeat().
#[no_mangle]
pub extern "C" fn reuseport_heartbeat_load(set: *const reuseport_set, load: c_uint) -> c_int {
    guard("reuseport_heartbeat_load", || {
        set_ref(set)?.heartbeat_load(load);
        Ok(0)
    })
}

/// The master's periodic watch over its workers: marks the stalled and overloaded ones so
/// the steering program skips them, moves a stalled worker's queued connections to its
/// siblings (needs root or CAP_SYS_PTRACE over the workers: pidfd_getfd(2)), and brings
/// recovered workers back. Returns the number of milliseconds after which to call it
/// again: while connections arrive, when the next verdict may be due (at most the
/// threshold; a quarter of it while a worker is marked stalled), 1000 after a second
/// without any (an idle master wakes once a second), or 0 when no listener of the set is
/// steered (nothing to watch), or a negative errno. Call it again after that long, not on
/// a fixed period: the delay changes from call to call. Cheap: it reads counters in shared
/// memory, and the accept queues (one sock_diag query per address family) only when a
/// verdict is possible. Who: the master, on a timer, for the set of its current generation
/// (after release too).
#[no_mangle]
pub extern "C" fn reuseport_watch(set: *const reuseport_set) -> c_int {
    guard("reuseport_watch", || {
        Ok(set_ref(set)?.watch().map_or(0, |d| d.as_millis().clamp(1, c_int::MAX as u128) as c_int))
    })
}

/// 1 when listener `index`'s group is run by the library's steering program, 0 when not
/// (steering off, no CAP_BPF at open, or another strategy), -ENOENT for a bad index.
#[no_mangle]
pub extern "C" fn reuseport_listener_is_steered(set: *const reuseport_set, index: usize) -> c_int {
    guard_query("reuseport_listener_is_steered", || Ok(listener_at(set_ref(set)?, index)?.steering.is_some() as c_int))
}

/// Names `fd`, a listen socket of another binary in one of the set's steered groups
/// (stock nginx's, inherited across an upgrade, which that binary's processes keep
/// accepting from), as a fallback target: when none of the group's own sockets may take a
/// new connection (this binary's last workers are leaving), the program sends it there
/// rather than to the kernel's hash, which would also choose the leaving sockets up to
/// their close and reset a handshake completing in it. The set takes no ownership and
/// keeps no reference: the caller may close `fd` at once; the target is gone once the
/// socket is closed in every process. Who: the master, after reuseport_master_open().
/// Returns 1 when added, 0 when the socket's address is no steered listener's (or the
/// group holds 64 already), -EBADF for a closed fd, or another negative errno (-EINVAL,
/// -EBUSY: not a listening SO_REUSEPORT socket of that group, or in another socket array).
#[no_mangle]
pub extern "C" fn reuseport_set_add_fallback(set: *const reuseport_set, fd: c_int) -> c_int {
    guard("reuseport_set_add_fallback", || {
        let set = set_ref(set)?;
        // SAFETY: fcntl(F_GETFD) only asks whether the number is an open fd.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(Error::new(libc::EBADF, Step::Bpf, format!("add a fallback: fd {fd} is not open")));
        }
        // SAFETY: open (checked above), and borrowed only for this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        set.add_fallback(fd).map(c_int::from)
    })
}

/// The struct's size in the first release (0.1): `slot_size` may not be smaller.
pub const REUSEPORT_SLOT_SIZE_V1: usize = 24;
const _: () = assert!(std::mem::size_of::<reuseport_slot>() >= REUSEPORT_SLOT_SIZE_V1);

/// Fills `out` (room for `cap` entries of `slot_size` bytes each: pass
/// `sizeof(struct reuseport_slot)`; NULL with cap 0 to count) with the claimed slots of
/// listener `index`'s group, every worker this master forked that holds a socket there.
/// Returns how many slots are claimed (which may exceed `cap`: only `cap` are written),
/// -ENOENT for a bad index, -ENOTSUP when the group is not steered, -EINVAL for a
/// `slot_size` below the first release's.
#[no_mangle]
pub extern "C" fn reuseport_listener_get_slots(
    set: *const reuseport_set,
    index: usize,
    out: *mut reuseport_slot,
    cap: usize,
    slot_size: usize,
) -> c_int {
    guard_query("reuseport_listener_get_slots", || {
        let s = set_ref(set)?;
        let l = listener_at(s, index)?;
        let steering = l.steering.as_ref().ok_or_else(|| {
            Error::new(libc::ENOTSUP, Step::Lifecycle, format!("{}: this listener's group is not steered", l.addr))
        })?;
        if out.is_null() && cap > 0 {
            return Err(Error::invalid("out is NULL but cap is not 0"));
        }
        if cap > 0 {
            check_out_size(slot_size, REUSEPORT_SLOT_SIZE_V1, "slot_size")?;
        }
        let all = steering.status();
        for (k, st) in all.iter().take(cap).enumerate() {
            let slot = reuseport_slot {
                slot: st.slot as c_int,
                pid: st.pid as c_int,
                state: state_code(st.state) as c_int,
                queue: st.queue,
                beats: st.beats,
            };
            // SAFETY: out has room for cap entries of slot_size bytes (the caller's
            // contract); k < cap; slot_size >= the V1 size (checked above).
            unsafe { write_out((out as *mut u8).add(k * slot_size), slot_size, &slot) };
        }
        Ok(all.len() as c_int)
    })
}

/// The master takes its groups' steering back after the new binary of an upgrade exited
/// (a revert: TERM to the new master, or its crash): the new master's program, with slots
/// of workers that are gone, would otherwise stay in the groups, unsteered until the next
/// reload. Joins each steered group for an instant with a fresh socket (root, like the
/// master's open), attaches this set's program, and closes that socket. Returns the
/// number of groups reclaimed (0 when none is steered), or a negative errno. Who: the
/// master, when it reaps the new binary's process.
#[no_mangle]
pub extern "C" fn reuseport_master_reclaim(set: *const reuseport_set) -> c_int {
    guard("reuseport_master_reclaim", || Ok(set_ref(set)?.reclaim_steering()? as c_int))
}
