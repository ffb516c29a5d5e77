//! The master's watch over its workers' slots: who is stalled, who is overloaded, and
//! taking a stalled worker's queued connections away from it.
//!
//! A worker calls reuseport_heartbeat() once per event-loop iteration, which bumps a
//! counter in the shared slot table. The master calls reuseport_watch() every few tens of
//! milliseconds, reads the counters, and the accept queue of each worker's socket from
//! sock_diag (diag.rs). The verdicts, in judge():
//!
//! - *stalled*: connections have been waiting in its queue for the threshold (default
//!   50 ms) and its heartbeat has not moved. An idle worker blocked in epoll_wait() has an
//!   empty queue, so it is never stalled, however old its heartbeat. A stalled slot stays
//!   out of the program's choice until its heartbeat moves again: without that, its queue
//!   (emptied by the rescue) would make it look idle and it would be chosen again.
//! - *overloaded*: its heartbeat moves but its queue grew at every tick for two thresholds;
//!   it is back when the queue has shrunk to half.
//! - A worker that never called reuseport_heartbeat() is not judged (a server that does not
//!   use the call keeps plain even steering).
//!
//! The rescue. Connections already in a stalled worker's queue would wait for it (a
//! SIGSTOPped worker: until SIGCONT; the clients time out first). The best outcome is that
//! a healthy sibling serves them, and the kernel already knows how: a listener that stops
//! listening hands its queue to the group's other members (migration, chosen by the
//! steering program, which skips the stalled slot). So the master takes a duplicate of the
//! stalled worker's socket with pidfd_getfd(2) (root, or CAP_SYS_PTRACE over the workers),
//! shuts it down (the queue migrates), calls listen() on it again at once, and puts it back
//! in the sockarray, still marked stalled. The worker notices nothing: when it resumes, its
//! socket is listening, its queue was served by a sibling, and its next heartbeat makes it
//! eligible again. The rescue waits one tick after the verdict, so that handshakes begun
//! before the slot left the program's choice have completed into the queue and migrate
//! with it. Without the privilege, the slot is still steered around; what it had queued
//! waits for it (logged once).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::rescue;
use super::slots::{Group, FLAG_CLAIMED, FLAG_OVERLOADED, FLAG_STALE, SLOTS};
use super::verdict::{judge, Decision, Observation, SlotMemory, OVERLOAD_TICKS};
use crate::log::{self, Level};
use crate::sys::{diag, procfs};

/// What the watch remembers of a group between ticks.
#[derive(Debug, Default)]
pub(crate) struct WatchState {
    slots: Vec<SlotMemory>,
    /// The errno of a rescue that failed for want of privilege (reported once).
    rescue_denied: Option<i32>,
    diag_failed: bool,
}

impl WatchState {
    /// One tick over group `s`: judges every claimed slot, applies the verdicts to the
    /// shared flags, and rescues the queue of a slot found stalled.
    pub(crate) fn tick(
        &mut self,
        s: &Group<'_>,
        threshold: Duration,
        listeners: &io::Result<HashMap<u64, diag::Listener>>,
    ) {
        let st = self;
        let listeners = match listeners {
            Ok(l) => {
                st.diag_failed = false;
                l
            }
            Err(e) => {
                if !st.diag_failed {
                    log::emit(Level::Warn, &format!("{}: health watch: cannot read the accept queues (sock_diag): {e}; stalled workers are not detected", s.addr));
                    st.diag_failed = true;
                }
                return;
            }
        };
        st.slots.resize(SLOTS, SlotMemory::default());
        let t = s.table;
        let now = Instant::now();
        for i in 0..SLOTS {
            let flags = t.flags(i).load(Ordering::Acquire);
            if flags & FLAG_CLAIMED == 0 {
                st.slots[i] = SlotMemory::default();
                continue;
            }
            let (pid, inode) = (t.pid(i).load(Ordering::Relaxed), t.inode(i).load(Ordering::Relaxed));
            if st.slots[i].owner() != (pid, inode) {
                st.slots[i] = SlotMemory::for_owner((pid, inode));
            }
            if pid == 0 {
                continue; // being claimed right now
            }
            if !procfs::alive(pid) {
                if t.flags(i).compare_exchange(flags, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    log::emit(Level::Debug, &format!("{}: slot {i}: worker {pid} is gone; slot freed", s.addr));
                }
                continue;
            }
            let queue = listeners.get(&inode).map(|l| l.queue);
            t.queue(i).store(queue.unwrap_or(0), Ordering::Relaxed);
            let obs = Observation { beats: t.beats(i).load(Ordering::Relaxed), queue };
            let d = judge(&mut st.slots[i], flags, obs, now, threshold);
            if d.free {
                if t.flags(i).compare_exchange(flags, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    log::emit(
                        Level::Debug,
                        &format!("{}: slot {i}: worker {pid}'s socket no longer listens; slot freed", s.addr),
                    );
                }
                continue;
            }
            if d.set != 0 {
                t.flags(i).fetch_or(d.set, Ordering::AcqRel);
            }
            if d.clear != 0 {
                t.flags(i).fetch_and(!d.clear, Ordering::AcqRel);
            }
            report(s, i, pid, &d, queue.unwrap_or(0), threshold);
            if d.rescue {
                if let Some(denied) = rescue::rescue(s, i, listeners, st.rescue_denied.is_some()) {
                    st.rescue_denied = Some(denied);
                }
            }
        }
    }
}

fn report(s: &Group<'_>, slot: usize, pid: u32, d: &Decision, queue: u32, threshold: Duration) {
    let addr = s.addr;
    if d.set & FLAG_STALE != 0 {
        log::emit(Level::Warn, &format!("{addr}: worker {pid} (slot {slot}) is not accepting: {queue} connection(s) waited {} ms without a heartbeat; new connections go to its siblings", threshold.as_millis()));
    }
    if d.clear & FLAG_STALE != 0 {
        log::emit(
            Level::Info,
            &format!("{addr}: worker {pid} (slot {slot}) is accepting again; it gets new connections again"),
        );
    }
    if d.set & FLAG_OVERLOADED != 0 {
        log::emit(Level::Warn, &format!("{addr}: worker {pid} (slot {slot}) is overloaded: its accept queue grew for {} ticks to {queue}; new connections go to its siblings", OVERLOAD_TICKS));
    }
    if d.clear & FLAG_OVERLOADED != 0 {
        log::emit(
            Level::Info,
            &format!("{addr}: worker {pid} (slot {slot}) caught up (queue {queue}); it gets new connections again"),
        );
    }
}
