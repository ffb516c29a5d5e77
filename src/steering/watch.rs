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
//!   (emptied by the rescue) would make it look idle and it would be chosen again. Or
//!   until it is found asleep in its event loop's wait with nothing queued
//!   (procfs::waits_for_events()): a healthy worker starved of CPU for the threshold on a
//!   crowded host (200 workers on one CPU) wakes with its queue gone and nothing to wake
//!   it again, so it would serve nothing for good; it is given connections again a
//!   threshold after the verdict, and if it takes none the verdict comes back and the
//!   next return waits twice as long (up to 64 thresholds). A stopped worker (SIGSTOP)
//!   is never such a sleeper.
//! - *overloaded*: its heartbeat moves but its queue grew at OVERLOAD_READINGS readings in
//!   a row (under traffic the queues are read every two thresholds: eight thresholds,
//!   400 ms at the default) and holds at least 16 and twice the group's typical queue (on
//!   a host where every worker's queue grows, steering around one helps nothing); it is
//!   back when the queue has shrunk to half, whether or not it beats (an idle worker does
//!   not).
//!   The load-aware choice (program.rs) reacts per connection; this verdict is the slower
//!   backstop for a worker that keeps falling behind.
//! - A worker that never called reuseport_heartbeat() is not judged (a server that does not
//!   use the call keeps plain even steering).
//! - The last eligible worker of a group is not judged either (see `Observation::alone`):
//!   with no sibling to steer to, the kernel's hash would take over, and send connections
//!   to the workers already judged. Once the table's program sees no traffic (another
//!   program steers the group), a listener of the group outside the table counts as a
//!   sibling: in an upgrade, the old master's last worker once its siblings retired is
//!   judged, and its queue moved to the new generation.
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
//!
//! What a tick costs, and when the master sleeps. The program bumps a counter of the slot
//! it chose for every connection (and a group counter when it leaves one to the kernel),
//! so a tick knows from memory alone whether anything arrived since the last one, and
//! whether connections were sent to a worker since its last heartbeat (its counter differs
//! from what the heartbeat recorded). The first such connection also leaves its arrival
//! time in the slot (`unseen_at`, CLOCK_MONOTONIC_COARSE: the program stamps it, or the
//! heartbeat when the connection came while it recorded `seen`), and that is what a stall
//! is timed from. So the watch need not sample the slots every few milliseconds to see
//! when connections began to wait: each tick computes the earliest moment a verdict may be
//! due (a first unseen connection's arrival plus the threshold) and asks to be called
//! then, or a threshold from now if that is sooner (a stall that begins after this tick
//! is then seen in time). Under traffic that is about one tick per threshold, 20 a second
//! at the default, and a stall is judged the threshold after the first connection it left
//! unseen (to within a jiffy, the clock's resolution). While a slot is marked stalled the
//! watch ticks at a quarter threshold (its rescue, and its return).
//!
//! The queues (one sock_diag query per address family) are read only when one may
//! matter: a verdict is due, a slot is marked stalled and still (its rescue), every two
//! thresholds under traffic (the overload rule counts growth over those readings), or
//! once a second otherwise (sockets that stopped listening without retiring). Whether a
//! worker still lives (kill(pid, 0)) is asked only of slots whose heartbeat stands still,
//! at most once a second. After a second without any arrival and with every queue empty,
//! the watch asks to be called again in a second: an idle master wakes once a second.
//! The first connections after such a pause may thus find a stalled worker judged up to a
//! second late.
//!
//! Threshold 0 turns the verdicts off, not the program: it still keeps new connections
//! off a leaving socket (without it, the kernel's hash sends handshakes to a listener up
//! to its close, and one that completes in the microseconds the close takes is reset,
//! migration or not: measured, 1 to 6 resets in a 10 s reload storm at saturation). The
//! watch then only keeps the table true, once a second: it lifts a verdict made before the
//! threshold was set to 0, frees the slots of workers that died or whose socket stopped
//! listening, and rebuilds an eligible list a killed process left half done.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::eligible;
use super::rescue;
use super::slots::{eligible, Group, FLAG_CLAIMED, FLAG_OVERLOADED, FLAG_RETIRING, FLAG_STALE, FLAG_WARMING, OVERFLOW};
use super::verdict::{judge, tick_for, Decision, Observation, Queue, SlotMemory, OVERLOAD_READINGS};
use crate::log::{self, Level};
use crate::sys::{diag, procfs};

/// How long without arrivals before the watch slows down to IDLE_TICK.
pub(crate) const QUIET_AFTER: Duration = Duration::from_secs(1);
/// How long a new slot may wait for its owner's first heartbeat before it is chosen anyway.
const WARMING_MAX: Duration = Duration::from_secs(1);
/// The tick of an idle group.
pub(crate) const IDLE_TICK: Duration = Duration::from_secs(1);
/// The queues are read at least this often (sockets that stopped listening are freed),
/// and whether still workers live is asked this often.
const DIAG_AT_LEAST: Duration = Duration::from_secs(1);

/// What the watch remembers of a group between ticks.
#[derive(Debug, Default)]
pub(crate) struct WatchState {
    slots: Vec<SlotMemory>,
    /// The errno of a rescue that failed for want of privilege (reported once).
    rescue_denied: Option<i32>,
    diag_failed: bool,
    /// The sum of the group's arrival counters at the last tick.
    traffic: u64,
    /// Since when nothing arrived (None: something arrived at the last tick).
    quiet_since: Option<Instant>,
    /// Some queue was not empty at the last reading.
    any_queue: bool,
    /// When the queues were last read.
    last_diag: Option<Instant>,
    last_alive_check: Option<Instant>,
    /// This tick's plan (plan() then tick()).
    moved: bool,
    /// The earliest moment ahead at which a verdict may be due (plan()).
    due: Option<Instant>,
    /// Some slot is marked stalled (tick()).
    stalled: bool,
}

/// How much earlier than its moment a verdict is looked at (a tick may come a little early).
const EARLY: Duration = Duration::from_millis(1);
/// The shortest wait between ticks.
const MIN_TICK: Duration = Duration::from_millis(1);

/// Under traffic without a stall candidate, the queues are read this often (two
/// thresholds; the overload rule counts growth over those readings). A reading is one
/// sock_diag dump, and a dump walks the kernel's whole listening hash (16,384 buckets,
/// 256 KiB, cold in the cache: a few hundred microseconds) however few listeners it
/// returns. Following busy queues at every tick (a queue of 4 or more had the next tick
/// read again) cost a master of 64 workers x 4 addresses under load 1.7 % of a core, most
/// of it in that walk, because on a busy host some queue always holds a few.
fn overload_every(threshold: Duration) -> Duration {
    threshold * 2
}

/// Now, on both clocks: std's Instant for the watch's memory, and the kernel's
/// CLOCK_MONOTONIC_COARSE nanoseconds for the stamps the program and the workers leave in
/// the table (to within a jiffy: a verdict may come that much before the threshold; in a
/// time namespace, without its offset, as the program's helper reads it).
struct Clock {
    now: Instant,
    now_ns: u64,
}

impl Clock {
    fn now() -> Clock {
        Clock { now: Instant::now(), now_ns: procfs::kernel_monotonic_coarse_ns() }
    }

    /// A stamp (0: none) as an Instant; one from the future (the clocks are read a few
    /// nanoseconds apart) is now.
    fn instant(&self, stamp_ns: u64) -> Option<Instant> {
        if stamp_ns == 0 {
            return None;
        }
        let ago = Duration::from_nanos(self.now_ns.saturating_sub(stamp_ns));
        Some(self.now.checked_sub(ago).unwrap_or(self.now))
    }
}

impl WatchState {
    /// Before a tick: whether it needs the queues (a sock_diag query), and when the next
    /// tick is due.
    pub(crate) fn plan(&mut self, s: &Group<'_>, threshold: Duration) -> bool {
        let t = s.table;
        let high = t.high();
        let traffic = (0..high).map(|i| t.arrivals(i).load(Ordering::Relaxed) as u64).sum::<u64>()
            + t.passed().load(Ordering::Relaxed) as u64;
        let clock = Clock::now();
        let now = clock.now;
        self.moved = traffic != self.traffic;
        self.traffic = traffic;
        if self.moved {
            self.quiet_since = None;
        } else {
            self.quiet_since.get_or_insert(now);
        }
        // A stall candidate: a verdict on it is possible at this tick. Connections were
        // sent to it since its last heartbeat and the first of them arrived about a
        // threshold ago (the program's stamp: no heartbeat since, or it would have seen
        // them). Or it is marked stalled and still: its rescue and the stragglers after
        // it need the queues. An idle worker (nothing sent since it last looked) is not
        // one, however still, nor is a worker that is merely descheduled for a few ticks
        // on a busy host. The earliest such moment still ahead is when the next tick is due.
        let mut candidate = false;
        let mut due: Option<Instant> = None;
        if !threshold.is_zero() {
            for i in 0..high {
                let f = t.flags(i).load(Ordering::Acquire);
                if f & FLAG_CLAIMED == 0 || f & FLAG_RETIRING != 0 {
                    continue;
                }
                let beats = t.beats(i).load(Ordering::Relaxed);
                let Some(m) = self.slots.get(i).filter(|_| beats != 0) else { continue };
                let still = m.last_beats() == beats;
                if f & FLAG_STALE != 0 {
                    candidate |= still;
                    continue;
                }
                if t.arrivals(i).load(Ordering::Relaxed) == t.seen(i).load(Ordering::Relaxed) {
                    continue;
                }
                let since = match clock.instant(t.unseen_at(i).load(Ordering::Relaxed)) {
                    Some(at) => at,
                    // No stamp: timed from the first tick that saw them, as judge() does.
                    None if still => m.unseen_since().unwrap_or(now),
                    None => now,
                };
                let verdict_at = since + threshold;
                candidate |= verdict_at <= now + EARLY;
                if verdict_at > now {
                    // Also when looked at early: judge() decides on the exact moment, and
                    // a tick that came a little before it is followed by one at it.
                    due = Some(due.map_or(verdict_at, |d| d.min(verdict_at)));
                }
            }
        }
        self.due = due;
        let diag_due = self.last_diag.is_none_or(|at| now - at >= DIAG_AT_LEAST);
        let overload_rule = !threshold.is_zero()
            && self.moved
            && self.last_diag.is_none_or(|at| now - at + EARLY >= overload_every(threshold));
        candidate || overload_rule || diag_due
    }

    /// When the group wants the next tick: at the next moment a verdict may be due, at
    /// most a threshold from now while connections arrive (a stall that begins after this
    /// tick is then seen in time to be judged the threshold after its first connection),
    /// a quarter threshold while a slot is marked stalled (its rescue, and its return),
    /// and once a second when idle.
    pub(crate) fn next_tick(&self, threshold: Duration) -> Duration {
        let quiet = self.quiet_since.is_some_and(|since| since.elapsed() >= QUIET_AFTER);
        if threshold.is_zero() || (quiet && !self.any_queue) {
            return IDLE_TICK;
        }
        if self.stalled {
            return tick_for(threshold);
        }
        let until_due = self.due.map_or(threshold, |at| at.saturating_duration_since(Instant::now()));
        until_due.clamp(MIN_TICK, threshold.max(MIN_TICK))
    }

    /// One tick over group `s`: judges every claimed slot, applies the verdicts to the
    /// shared flags, and rescues the queue of a slot found stalled. `listeners` is None
    /// when plan() said the queues are not needed.
    pub(crate) fn tick(
        &mut self,
        s: &Group<'_>,
        threshold: Duration,
        listeners: Option<&io::Result<HashMap<u64, diag::Listener>>>,
    ) {
        let st = self;
        let t = s.table;
        eligible::rebuild_if_dirty(t);
        let listeners = match listeners {
            None => None,
            Some(Ok(l)) => {
                st.diag_failed = false;
                Some(l)
            }
            Some(Err(e)) => {
                if !st.diag_failed {
                    log::emit(Level::Warn, &format!("{}: health watch: cannot read the accept queues (sock_diag): {e}; stalled workers are not detected", s.addr));
                    st.diag_failed = true;
                }
                return;
            }
        };
        let clock = Clock::now();
        let now = clock.now;
        st.stalled = false;
        if listeners.is_some() {
            st.last_diag = Some(now);
            st.any_queue = false;
        }
        let check_alive = st.last_alive_check.is_none_or(|at| now - at >= DIAG_AT_LEAST.max(threshold));
        if check_alive {
            st.last_alive_check = Some(now);
            forget_dead_unlisted(s);
        }
        let high = t.high();
        if st.slots.len() < high {
            st.slots.resize(high, SlotMemory::default());
        }
        let mut eligible_now = (0..high).filter(|&j| eligible(t.flags(j).load(Ordering::Acquire))).count();
        // Only while this table's program sees no traffic: the group's connections go through
        // another program (an upgrade's new master attached its own) or none arrive. While
        // ours still chooses, an outsider (an old generation's closing socket, a master's
        // socket no worker adopted yet, `nginx -t`'s) is no sibling to send them to.
        let outsiders = !st.moved && listeners.is_some_and(|l| outsiders_listen(t, high, l, s.addr));
        let typical_queue = listeners.map_or(0, |l| typical_queue(t, high, l));
        for i in 0..high {
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
            if flags & FLAG_WARMING != 0 {
                // A worker whose loop has not beaten since it joined: chosen anyway after
                // WARMING_MAX, so that one that never beats still gets its share.
                let since = *st.slots[i].warming_since.get_or_insert(now);
                if now - since >= WARMING_MAX {
                    t.clear_flags(i, FLAG_WARMING);
                    log::emit(Level::Info, &format!("{}: worker {pid} (slot {i}) has not called the heartbeat {} ms after joining; it gets new connections anyway", s.addr, WARMING_MAX.as_millis()));
                }
                continue;
            }
            let beats = t.beats(i).load(Ordering::Relaxed);
            let still = beats == st.slots[i].last_beats();
            if still && check_alive && !procfs::alive(pid) {
                if t.replace_flags(i, flags, 0) {
                    log::emit(Level::Debug, &format!("{}: slot {i}: worker {pid} is gone; slot freed", s.addr));
                }
                continue;
            }
            let queue = match listeners {
                None => Queue::Unread,
                Some(l) => match l.get(&inode) {
                    Some(found) => {
                        t.queue(i).store(found.queue, Ordering::Relaxed);
                        st.any_queue |= found.queue > 0;
                        Queue::Len(found.queue)
                    }
                    None => {
                        t.queue(i).store(0, Ordering::Relaxed);
                        Queue::Missing
                    }
                },
            };
            let unseen = t.arrivals(i).load(Ordering::Relaxed) != t.seen(i).load(Ordering::Relaxed);
            let unseen_at = if unseen { clock.instant(t.unseen_at(i).load(Ordering::Relaxed)) } else { None };
            let alone = eligible_now <= usize::from(eligible(flags)) && !outsiders;
            // Read from /proc only when it could bring the slot back (verdict.rs).
            let waits_for_events = flags & FLAG_STALE != 0
                && still
                && queue == Queue::Len(0)
                && st.slots[i].probe_due(now, threshold)
                && procfs::waits_for_events(pid);
            let d = judge(
                &mut st.slots[i],
                flags,
                Observation { beats, queue, unseen, unseen_at, alone, typical_queue, waits_for_events },
                now,
                threshold,
            );
            if d.free {
                if t.replace_flags(i, flags, 0) {
                    log::emit(
                        Level::Debug,
                        &format!("{}: slot {i}: worker {pid}'s socket no longer listens; slot freed", s.addr),
                    );
                }
                continue;
            }
            if d.set != 0 {
                t.set_flags(i, d.set);
            }
            if d.idle_return {
                // What was sent to it before the verdict went to a sibling with its queue, but
                // still counts as unseen in its score (the program compares arrivals with what
                // its heartbeat saw): without this, every sibling would score lower and it
                // would get nothing still. The next connection stamps a fresh arrival.
                t.seen(i).store(t.arrivals(i).load(Ordering::SeqCst), Ordering::SeqCst);
            }
            if d.clear != 0 {
                t.clear_flags(i, d.clear);
            }
            let after = (flags | d.set) & !d.clear;
            st.stalled |= after & FLAG_STALE != 0 && after & FLAG_RETIRING == 0;
            match (eligible(flags), eligible(after)) {
                (true, false) => eligible_now -= 1,
                (false, true) => eligible_now += 1,
                _ => {}
            }
            let q = if let Queue::Len(q) = queue { q } else { 0 };
            report(s, i, pid, &d, q, threshold);
            if d.rescue {
                let l = listeners.expect("a rescue is decided on a tick that read the queues");
                if let Some(denied) = rescue::rescue(s, i, l, st.rescue_denied.is_some()) {
                    st.rescue_denied = Some(denied);
                }
            }
        }
    }
}

/// The (lower) median accept queue of the group's eligible slots at this reading: what the
/// overload rule compares a growing queue with.
fn typical_queue(t: &super::slots::Table, high: usize, listeners: &HashMap<u64, diag::Listener>) -> u32 {
    let mut queues: Vec<u32> = (0..high)
        .filter(|&i| eligible(t.flags(i).load(Ordering::Acquire)))
        .filter_map(|i| listeners.get(&t.inode(i).load(Ordering::Relaxed)).map(|l| l.queue))
        .collect();
    if queues.is_empty() {
        return 0;
    }
    // The lower median: with two workers, the other one's.
    let mid = (queues.len() - 1) / 2;
    *queues.select_nth_unstable(mid).1
}

/// Whether a listener of the group's address is not in this table: another master's
/// worker (an upgrade's new generation, whose program now steers the group) or a member
/// the server added as a fallback. Then, when this table's program no longer sees the
/// group's traffic, its last eligible worker is not alone (verdict.rs,
/// `Observation::alone`): steered around, or with its queue moved, its connections have
/// somewhere to go. Without this, an old master whose other workers had retired never
/// judged a stopped one, and what it had queued waited for it (the clients timed out)
/// although the new workers served everything else.
fn outsiders_listen(
    t: &super::slots::Table,
    high: usize,
    listeners: &HashMap<u64, diag::Listener>,
    addr: std::net::SocketAddr,
) -> bool {
    let ours: Vec<u64> = (0..high)
        .filter(|&i| t.flags(i).load(Ordering::Acquire) & FLAG_CLAIMED != 0)
        .map(|i| t.inode(i).load(Ordering::Relaxed))
        .collect();
    let dev = diag::group_device(listeners, ours.iter().copied(), &addr);
    listeners.iter().any(|(ino, l)| l.is_on(&addr, dev) && !ours.contains(ino))
}

/// Workers the table could not hold that died without saying so: forgotten, so the
/// group is steered again once the rest have gone.
fn forget_dead_unlisted(s: &Group<'_>) {
    let t = s.table;
    if t.unlisted().load(Ordering::Acquire) == 0 {
        return;
    }
    for k in 0..OVERFLOW {
        let pid = t.overflow(k).load(Ordering::Acquire);
        if pid != 0
            && !procfs::alive(pid)
            && t.overflow(k).compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            t.unlisted().fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn report(s: &Group<'_>, slot: usize, pid: u32, d: &Decision, queue: u32, threshold: Duration) {
    let addr = s.addr;
    if d.set & FLAG_STALE != 0 {
        log::emit(Level::Warn, &format!("{addr}: worker {pid} (slot {slot}) is not accepting: {queue} connection(s) waited {} ms without a heartbeat; new connections go to its siblings", threshold.as_millis()));
    }
    if d.idle_return {
        log::emit(Level::Info, &format!("{addr}: worker {pid} (slot {slot}) waits for events with nothing queued (it was starved of CPU, not stopped); it gets new connections again"));
    } else if d.clear & FLAG_STALE != 0 {
        log::emit(
            Level::Info,
            &format!("{addr}: worker {pid} (slot {slot}) is accepting again; it gets new connections again"),
        );
    }
    if d.set & FLAG_OVERLOADED != 0 {
        log::emit(Level::Warn, &format!("{addr}: worker {pid} (slot {slot}) is overloaded: its accept queue grew at {} readings in a row to {queue}; new connections go to its siblings", OVERLOAD_READINGS));
    }
    if d.clear & FLAG_OVERLOADED != 0 {
        log::emit(
            Level::Info,
            &format!("{addr}: worker {pid} (slot {slot}) caught up (queue {queue}); it gets new connections again"),
        );
    }
}
