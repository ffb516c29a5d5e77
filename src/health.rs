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
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::diag;
use crate::log::{self, Level};
use crate::steer::{self, Steering, FLAG_CLAIMED, FLAG_OVERLOADED, FLAG_RETIRING, FLAG_STALE, SLOTS};

/// The default threshold: far above an event-loop iteration, far below a client's patience.
/// What it costs: connections hashed to a worker in its first threshold of a stall wait
/// that long (at 50 ms, about 3% of a 2 s stall's throughput); a worker busy in one
/// iteration for longer than this, with connections waiting, gets no new ones and has
/// its queue served by a sibling until it beats again, which is the point.
pub const DEFAULT_THRESHOLD: Duration = Duration::from_millis(50);
/// Growing at this many consecutive ticks (two thresholds) makes a worker overloaded...
const OVERLOAD_TICKS: u32 = 8;
/// ...if at least this many connections wait.
const OVERLOAD_MIN: u32 = 16;

/// How often the master should call watch() for a threshold.
pub fn tick_for(threshold: Duration) -> Duration {
    (threshold / 4).max(Duration::from_millis(5))
}

/// What the watch remembers of one slot between ticks.
#[derive(Debug, Clone, Default)]
pub struct SlotMemory {
    owner: (u32, u64),
    last_beats: u64,
    last_queue: u32,
    /// Since when connections wait while the heartbeat stands still.
    pending_since: Option<Instant>,
    stale_since: Option<Instant>,
    last_rescue: Option<Instant>,
    growth: u32,
    overload_mark: u32,
    missing_since: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct WatchState {
    slots: Vec<SlotMemory>,
    /// The errno of a rescue that failed for want of privilege (reported once).
    rescue_denied: Option<i32>,
    diag_failed: bool,
}

/// What one tick saw of a slot.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub beats: u64,
    /// The socket's accept queue; None when sock_diag did not list the socket.
    pub queue: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    pub set: u32,
    pub clear: u32,
    pub rescue: bool,
    /// The slot's socket is gone: free the slot.
    pub free: bool,
}

/// The verdict on one claimed slot. Pure: every rule is unit-tested.
pub fn judge(m: &mut SlotMemory, flags: u32, obs: Observation, now: Instant, threshold: Duration) -> Decision {
    let mut d = Decision::default();
    if flags & FLAG_RETIRING != 0 {
        return d;
    }
    let Some(queue) = obs.queue else {
        // Not listening any more (closed without retiring, or between shutdown and listen
        // of a rescue): free the slot if that lasts.
        let since = *m.missing_since.get_or_insert(now);
        d.free = now - since >= threshold;
        return d;
    };
    m.missing_since = None;
    let advanced = obs.beats != m.last_beats;
    m.last_beats = obs.beats;
    let last_queue = std::mem::replace(&mut m.last_queue, queue);
    if obs.beats == 0 {
        // Never beat: this worker's server does not call reuseport_heartbeat().
        d.clear = flags & (FLAG_STALE | FLAG_OVERLOADED);
        return d;
    }
    if advanced {
        m.pending_since = None;
        if flags & FLAG_STALE != 0 {
            d.clear |= FLAG_STALE;
            m.stale_since = None;
        }
        if queue > last_queue {
            m.growth += 1;
        } else if queue < last_queue {
            m.growth = 0;
        }
        if flags & FLAG_OVERLOADED == 0 && m.growth >= OVERLOAD_TICKS && queue >= OVERLOAD_MIN {
            d.set |= FLAG_OVERLOADED;
            m.overload_mark = queue;
        } else if flags & FLAG_OVERLOADED != 0 && queue <= m.overload_mark / 2 {
            d.clear |= FLAG_OVERLOADED;
            m.growth = 0;
        }
        return d;
    }
    if queue == 0 {
        m.pending_since = None; // idle, or already rescued
        return d;
    }
    let pending = *m.pending_since.get_or_insert(now);
    let mut stale_since = m.stale_since;
    if flags & FLAG_STALE == 0 && now - pending >= threshold {
        d.set |= FLAG_STALE;
        stale_since = Some(now);
        m.stale_since = stale_since;
    }
    if let Some(since) = stale_since {
        let settled = now - since >= tick_for(threshold);
        let not_again = m.last_rescue.is_none_or(|t| now - t >= threshold);
        if settled && not_again {
            d.rescue = true;
            m.last_rescue = Some(now);
        }
    }
    d
}

pub(crate) fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid != 0
        && (unsafe { libc::kill(pid as i32, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

impl Steering {
    fn family(&self) -> i32 {
        if self.addr.is_ipv6() {
            libc::AF_INET6
        } else {
            libc::AF_INET
        }
    }

    /// One tick of the watch over this group's slots.
    pub fn watch(&self, threshold: Duration) {
        self.watch_with(threshold, &diag::tcp_listeners(&[self.family()], &[self.addr.port()]));
    }

    /// One tick, given this tick's listeners of the group's address family (one sock_diag
    /// query serves every group of a set).
    fn watch_with(&self, threshold: Duration, listeners: &io::Result<HashMap<u64, diag::Listener>>) {
        let mut st = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        let listeners = match listeners {
            Ok(l) => {
                st.diag_failed = false;
                l
            }
            Err(e) => {
                if !st.diag_failed {
                    log::emit(Level::Warn, &format!("{}: health watch: cannot read the accept queues (sock_diag): {e}; stalled workers are not detected", self.addr));
                    st.diag_failed = true;
                }
                return;
            }
        };
        st.slots.resize(SLOTS, SlotMemory::default());
        let t = self.table();
        let now = Instant::now();
        for i in 0..SLOTS {
            let flags = t.flags[i].load(Ordering::Acquire);
            if flags & FLAG_CLAIMED == 0 {
                st.slots[i] = SlotMemory::default();
                continue;
            }
            let (pid, inode) = (t.pid[i].load(Ordering::Relaxed), t.inode[i].load(Ordering::Relaxed));
            if st.slots[i].owner != (pid, inode) {
                st.slots[i] = SlotMemory { owner: (pid, inode), ..Default::default() };
            }
            if pid == 0 {
                continue; // being claimed right now
            }
            if !alive(pid) {
                if t.flags[i].compare_exchange(flags, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    log::emit(Level::Debug, &format!("{}: slot {i}: worker {pid} is gone; slot freed", self.addr));
                }
                continue;
            }
            let queue = listeners.get(&inode).map(|l| l.queue);
            t.queue[i].store(queue.unwrap_or(0), Ordering::Relaxed);
            let obs = Observation { beats: t.beats[i].load(Ordering::Relaxed), queue };
            let d = judge(&mut st.slots[i], flags, obs, now, threshold);
            if d.free {
                if t.flags[i].compare_exchange(flags, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    log::emit(
                        Level::Debug,
                        &format!("{}: slot {i}: worker {pid}'s socket no longer listens; slot freed", self.addr),
                    );
                }
                continue;
            }
            if d.set != 0 {
                t.flags[i].fetch_or(d.set, Ordering::AcqRel);
            }
            if d.clear != 0 {
                t.flags[i].fetch_and(!d.clear, Ordering::AcqRel);
            }
            self.report(i, pid, &d, queue.unwrap_or(0), threshold);
            if d.rescue {
                self.rescue(&mut st, i, listeners);
            }
        }
    }

    fn report(&self, slot: usize, pid: u32, d: &Decision, queue: u32, threshold: Duration) {
        let addr = self.addr;
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

    /// Moves a stalled slot's queue to its siblings (see the module doc).
    fn rescue(&self, st: &mut WatchState, slot: usize, listeners: &HashMap<u64, diag::Listener>) {
        let t = self.table();
        let (pid, fd, inode, backlog) = (
            t.pid[slot].load(Ordering::Relaxed),
            t.fd[slot].load(Ordering::Relaxed),
            t.inode[slot].load(Ordering::Relaxed),
            t.backlog[slot].load(Ordering::Relaxed),
        );
        // The queue needs somewhere to go: another listener of this port that is not
        // itself stalled or leaving (members of another generation count).
        let unfit: Vec<u64> = (0..SLOTS)
            .filter(|&i| t.flags[i].load(Ordering::Acquire) & (FLAG_STALE | FLAG_RETIRING | FLAG_OVERLOADED) != 0)
            .map(|i| t.inode[i].load(Ordering::Relaxed))
            .collect();
        let port = self.addr.port();
        if !listeners.iter().any(|(ino, l)| l.port == port && *ino != inode && !unfit.contains(ino)) {
            log::emit(
                Level::Debug,
                &format!("{}: worker {pid}'s queue stays: no healthy sibling to take it", self.addr),
            );
            return;
        }
        let queued = listeners.get(&inode).map_or(0, |l| l.queue);
        match take_over(pid, fd, inode) {
            Ok(dup) => {
                // SAFETY: shutdown and listen on a duplicate of the worker's socket that
                // we hold; the socket is shared, so the worker's fd sees the same state.
                let stopped = unsafe { libc::shutdown(dup.as_raw_fd(), libc::SHUT_RD) };
                let relisten = unsafe { libc::listen(dup.as_raw_fd(), backlog) };
                if stopped != 0 || relisten != 0 {
                    log::emit(
                        Level::Warn,
                        &format!(
                            "{}: rescue of worker {pid}'s queue: {} failed: {}",
                            self.addr,
                            if stopped != 0 { "shutdown" } else { "listen" },
                            io::Error::last_os_error()
                        ),
                    );
                    return;
                }
                if let Err(e) = crate::bpf::sockarray_set(self.sockarray(), slot as u32, dup.as_fd()) {
                    log::emit(
                        Level::Warn,
                        &format!(
                            "{}: worker {pid}'s socket listens again but is not back in the steering map: {e}",
                            self.addr
                        ),
                    );
                }
                log::emit(
                    Level::Info,
                    &format!(
                        "{}: moved the {queued} connection(s) queued on stalled worker {pid} to its siblings",
                        self.addr
                    ),
                );
            }
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                if matches!(errno, libc::EPERM | libc::EACCES | libc::ENOSYS) {
                    if st.rescue_denied.is_none() {
                        log::emit(Level::Warn, &format!("{}: cannot take over stalled worker {pid}'s queue (pidfd_getfd: {e}); the master needs root or CAP_SYS_PTRACE over its workers, and Linux 5.6+; its {queued} waiting connection(s) stay until it resumes", self.addr));
                    }
                    st.rescue_denied = Some(errno);
                } else {
                    log::emit(Level::Debug, &format!("{}: rescue of worker {pid}: {e}", self.addr));
                }
            }
        }
    }
}

/// A duplicate of fd `fd` of process `pid`, checked to be the socket with `inode`.
fn take_over(pid: u32, fd: i32, inode: u64) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with no flags.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd(2) with no flags; the new fd is close-on-exec.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let dup = unsafe { OwnedFd::from_raw_fd(dup as i32) };
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", dup.as_raw_fd()))?.ino();
    if ino != inode {
        return Err(io::Error::new(
            io::ErrorKind::Other,
            format!("fd {fd} of worker {pid} is no longer its listen socket"),
        ));
    }
    Ok(dup)
}

/// The distinct steering contexts of a set's listeners.
pub(crate) fn distinct<'a>(
    all: impl Iterator<Item = &'a std::sync::Arc<Steering>>,
) -> Vec<&'a std::sync::Arc<Steering>> {
    let mut out: Vec<&std::sync::Arc<Steering>> = Vec::new();
    for s in all {
        if !out.iter().any(|o| std::sync::Arc::ptr_eq(o, s)) {
            out.push(s);
        }
    }
    out
}

pub use steer::SlotState;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steer::FLAG_MEMBER;

    const LIVE: u32 = FLAG_CLAIMED | FLAG_MEMBER;
    const T: Duration = Duration::from_millis(100);

    fn obs(beats: u64, queue: u32) -> Observation {
        Observation { beats, queue: Some(queue) }
    }

    #[test]
    fn an_idle_worker_with_an_old_heartbeat_is_healthy() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        judge(&mut m, LIVE, obs(5, 0), t0, T);
        let d = judge(&mut m, LIVE, obs(5, 0), t0 + Duration::from_secs(10), T);
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn waiting_connections_and_a_still_heartbeat_make_it_stalled_then_rescued_once() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        judge(&mut m, LIVE, obs(5, 0), t0, T);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(judge(&mut m, LIVE, obs(5, 3), at(25), T).set, 0, "queued, but not for the threshold yet");
        assert_eq!(judge(&mut m, LIVE, obs(5, 9), at(100), T).set, 0);
        let d = judge(&mut m, LIVE, obs(5, 12), at(125), T);
        assert_eq!(d.set, FLAG_STALE);
        assert!(!d.rescue, "the rescue waits one tick for handshakes in flight");
        let d = judge(&mut m, LIVE | FLAG_STALE, obs(5, 12), at(150), T);
        assert!(d.rescue);
        let d = judge(&mut m, LIVE | FLAG_STALE, obs(5, 0), at(175), T);
        assert_eq!(d, Decision::default(), "an emptied queue does not make a stalled worker healthy");
        let d = judge(&mut m, LIVE | FLAG_STALE, obs(5, 2), at(200), T);
        assert!(!d.rescue, "not again within a threshold");
        let d = judge(&mut m, LIVE | FLAG_STALE, obs(5, 2), at(260), T);
        assert!(d.rescue, "stragglers are moved again later");
        let d = judge(&mut m, LIVE | FLAG_STALE, obs(6, 2), at(275), T);
        assert_eq!(d.clear, FLAG_STALE, "a moving heartbeat brings it back");
    }

    #[test]
    fn a_busy_worker_is_not_stalled_and_a_growing_queue_is_overload() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        let mut flags = LIVE;
        for k in 0..=OVERLOAD_TICKS as u64 {
            let d = judge(&mut m, flags, obs(10 + k, 10 + 4 * k as u32), t0 + Duration::from_millis(25 * k), T);
            assert_eq!(d.set & FLAG_STALE, 0);
            flags |= d.set;
        }
        assert_ne!(flags & FLAG_OVERLOADED, 0, "grew at every tick");
        let d = judge(&mut m, flags, obs(100, 19), t0 + Duration::from_secs(1), T);
        assert_eq!(d.clear, FLAG_OVERLOADED, "back when the queue halved");
    }

    #[test]
    fn a_worker_without_heartbeats_is_never_judged() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        for k in 0..20 {
            let d = judge(&mut m, LIVE, obs(0, 50), t0 + Duration::from_millis(50 * k), T);
            assert_eq!(d.set, 0);
        }
    }

    #[test]
    fn retiring_slots_are_left_alone_and_missing_sockets_freed() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        assert_eq!(judge(&mut m, LIVE | FLAG_RETIRING, obs(1, 100), t0, T), Decision::default());
        let gone = Observation { beats: 1, queue: None };
        assert!(!judge(&mut m, LIVE, gone, t0, T).free);
        assert!(judge(&mut m, LIVE, gone, t0 + T, T).free);
    }
}

impl crate::Set {
    /// A worker's sign of life, once per event-loop iteration: an atomic add per steered
    /// listener, no system call.
    pub fn heartbeat(&self) {
        for c in self.listeners().iter().filter_map(|l| l.claim.as_ref()) {
            c.beat();
        }
    }

    /// The master's tick: judges every worker slot of this set's groups. Returns when to
    /// call again, or None when no listener is steered (nothing to watch).
    pub fn watch(&self) -> Option<Duration> {
        let groups = distinct(self.listeners().iter().filter_map(|l| l.steering.as_ref()));
        if groups.is_empty() {
            return None;
        }
        // One sock_diag query per address family, for the ports of all its groups.
        let by_family: Vec<(i32, io::Result<HashMap<u64, diag::Listener>>)> = [libc::AF_INET, libc::AF_INET6]
            .into_iter()
            .filter_map(|family| {
                let mut ports: Vec<u16> =
                    groups.iter().filter(|s| s.family() == family).map(|s| s.addr.port()).collect();
                ports.sort_unstable();
                ports.dedup();
                (!ports.is_empty()).then(|| (family, diag::tcp_listeners(&[family], &ports)))
            })
            .collect();
        for s in groups {
            let (_, listeners) = by_family.iter().find(|(f, _)| *f == s.family()).expect("one per family with groups");
            s.watch_with(self.health_threshold, listeners);
        }
        Some(tick_for(self.health_threshold))
    }

    /// How long connections may wait on a worker whose heartbeat stands still before it is
    /// steered around; zero turns steering off for the groups this set opens next.
    pub fn set_health_threshold(&mut self, threshold: Duration) {
        self.health_threshold = threshold;
    }

    pub fn health_threshold(&self) -> Duration {
        self.health_threshold
    }

    /// Whether listener `i`'s group is run by the steering program.
    pub fn steered(&self, i: usize) -> Option<bool> {
        self.listeners().get(i).map(|l| l.steering.is_some())
    }

    /// The claimed slots of listener `i`'s group (every generation member this process's
    /// table knows), or None when it is not steered.
    pub fn slots(&self, i: usize) -> Option<Vec<steer::SlotStatus>> {
        self.listeners().get(i)?.steering.as_ref().map(|s| s.status())
    }

    /// The slot this process holds in listener `i`'s group.
    pub fn own_slot(&self, i: usize) -> Option<usize> {
        self.listeners().get(i)?.claim.as_ref().map(|c| c.slot)
    }
}

impl crate::Set {
    /// The master takes its groups' steering back: after the new binary of an upgrade
    /// exited (a revert), its program, with slots of workers that are gone, would stay in
    /// the groups, and the kernel's hash would spread over the old workers unsteered. A
    /// program is attached through a member socket, and the master holds none, so it
    /// joins each group for an instant with a fresh socket, attaches its program, and
    /// closes it (what the kernel queued on it meanwhile migrates, through the program).
    /// Returns how many groups it reclaimed.
    pub fn reclaim_steering(&self) -> crate::Result<usize> {
        let mut n = 0;
        for l in self.listeners() {
            let Some(s) = &l.steering else { continue };
            let sock = crate::socket::open(&l.addr, &l.options)?;
            crate::bpf::attach(std::os::fd::AsFd::as_fd(&sock), s.program()).map_err(|e| {
                crate::Error::sys(&e, crate::Step::Bpf, &l.addr.to_string(), "the steering program could not be attached again; new connections spread by the kernel's hash until the next reload")
            })?;
            n += 1;
        }
        if n > 0 {
            log::emit(Level::Info, &format!("took the steering of {n} group(s) back"));
        }
        Ok(n)
    }
}
