//! The watch's verdicts on one slot, from what one tick saw: pure, every rule unit-tested.
//! The rules are described in watch.rs.

use std::time::{Duration, Instant};

use super::slots::{FLAG_OVERLOADED, FLAG_RETIRING, FLAG_STALE};

/// The default threshold: far above an event-loop iteration, far below a client's patience.
/// What it costs: connections hashed to a worker in its first threshold of a stall wait
/// that long (at 50 ms, about 3% of a 2 s stall's throughput); a worker busy in one
/// iteration for longer than this, with connections waiting, gets no new ones and has
/// its queue served by a sibling until it beats again, which is the point.
pub const DEFAULT_THRESHOLD: Duration = Duration::from_millis(50);
/// Growing at this many consecutive queue readings (two thresholds apart under traffic:
/// eight thresholds) makes a worker overloaded...
pub(crate) const OVERLOAD_READINGS: u32 = 4;
/// ...if at least this many connections wait...
const OVERLOAD_MIN: u32 = 16;
/// ...and at least this many times the group's typical queue (the lower median of its
/// eligible slots' at the same reading).
const OVERLOAD_FACTOR: u32 = 2;
/// A stalled worker found waiting for events with nothing queued is given new connections
/// again a threshold after the verdict, then twice that after its next verdict, and so on
/// up to this many doublings (64 thresholds, 3.2 s at the default) until it beats.
const IDLE_RETURN_DOUBLINGS: u32 = 6;
/// With verdicts off (threshold 0), how long a slot's socket may be missing from the
/// listeners before its slot is freed (the watch then reads the queues once a second).
pub(crate) const MISSING_GRACE_UNJUDGED: Duration = Duration::from_secs(1);

/// How often the master should call the watch for a threshold.
pub fn tick_for(threshold: Duration) -> Duration {
    (threshold / 4).max(Duration::from_millis(5))
}

/// What the watch remembers of one slot between ticks.
#[derive(Debug, Clone, Default)]
pub struct SlotMemory {
    /// Whose slot this memory is about (pid, inode): a new owner starts afresh.
    owner: (u32, u64),
    last_beats: u64,
    last_queue: u32,
    /// Since when connections wait while the heartbeat stands still.
    pending_since: Option<Instant>,
    /// The first tick since the worker's last heartbeat that saw connections sent to it
    /// after that heartbeat: they have waited at least since then. Known from the slot's
    /// counters on every tick, also those that do not read the queues, so a stall's clock
    /// starts at the first tick after its first unseen connection, not at the first queue
    /// reading after the heartbeat stopped (which is a tick or two later).
    unseen_since: Option<Instant>,
    stale_since: Option<Instant>,
    last_rescue: Option<Instant>,
    /// Times it was given connections again, since its last heartbeat, because it waited
    /// for events with nothing queued (the back-off of the next such return).
    idle_returns: u32,
    /// When the watch last looked in /proc whether its owner waits for events.
    last_probe: Option<Instant>,
    growth: u32,
    overload_mark: u32,
    missing_since: Option<Instant>,
    /// Since when the watch has seen the slot warming (claimed, no heartbeat yet).
    pub(crate) warming_since: Option<Instant>,
}

impl SlotMemory {
    /// A fresh memory for a slot's new owner (pid, socket inode).
    pub(crate) fn for_owner(owner: (u32, u64)) -> Self {
        SlotMemory { owner, ..Default::default() }
    }

    pub(crate) fn owner(&self) -> (u32, u64) {
        self.owner
    }
}

/// What one tick saw of a slot.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub beats: u64,
    pub queue: Queue,
    /// Connections were sent to it since its last heartbeat (the program's arrival counter
    /// differs from what the heartbeat recorded).
    pub unseen: bool,
    /// When the first of them arrived (the program's stamp, slots.rs `unseen_at`); None
    /// when unknown, and then the first tick that saw them starts the clock.
    pub unseen_at: Option<Instant>,
    /// No other slot of the group is eligible: steering around this one would leave the
    /// program no choice, and the kernel's hash would send new connections to the very
    /// workers already judged (a stopped one among them). So the last eligible worker is
    /// neither marked stalled nor overloaded (on a loaded host, a healthy worker starved
    /// of CPU for the threshold looks stalled); the verdict comes once a sibling is back.
    /// Once the table's program sees no traffic, a listener of the group outside the table
    /// (another generation's, a fallback) is such a sibling (watch.rs `outsiders_listen`).
    pub alone: bool,
    /// The lower median queue of the group's eligible slots at this reading (0 when unread).
    pub typical_queue: u32,
    /// Its owner sleeps in its event loop's wait (procfs::waits_for_events()): asked only
    /// of a slot marked stalled, with an empty queue, whose idle return is due
    /// (SlotMemory::probe_due()); false otherwise.
    pub waits_for_events: bool,
}

/// A slot's accept queue as one tick saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Its length, from sock_diag.
    Len(u32),
    /// sock_diag did not list the socket: it no longer listens.
    Missing,
    /// Not read this tick: the watch reads the queues only when one may matter (watch.rs).
    Unread,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    pub set: u32,
    pub clear: u32,
    pub rescue: bool,
    /// The slot's socket is gone: free the slot.
    pub free: bool,
    /// The stalled verdict is lifted because its owner waits for events with nothing
    /// queued, not because it beat.
    pub idle_return: bool,
}

/// The verdict on one claimed slot. Pure: every rule is unit-tested.
pub fn judge(m: &mut SlotMemory, flags: u32, obs: Observation, now: Instant, threshold: Duration) -> Decision {
    let mut d = Decision::default();
    if flags & FLAG_RETIRING != 0 {
        return d;
    }
    if threshold.is_zero() {
        return housekeeping_only(m, flags, obs, now);
    }
    let queue = match obs.queue {
        Queue::Len(q) => q,
        Queue::Unread => return judge_beats_only(m, flags, obs, now),
        Queue::Missing => {
            // Not listening any more (closed without retiring, or between shutdown and listen
            // of a rescue): free the slot if that lasts.
            let since = *m.missing_since.get_or_insert(now);
            d.free = now - since >= threshold;
            return d;
        }
    };
    m.missing_since = None;
    if flags & FLAG_STALE != 0 {
        // A verdict this memory did not see made (the flag set in the shared table by
        // another process) is timed from the first tick that sees it.
        m.stale_since.get_or_insert(now);
    }
    let advanced = obs.beats != m.last_beats;
    track_unseen(m, advanced, &obs, now);
    m.last_beats = obs.beats;
    let last_queue = std::mem::replace(&mut m.last_queue, queue);
    if obs.beats == 0 {
        // Never beat: this worker's server does not call reuseport_heartbeat().
        d.clear = flags & (FLAG_STALE | FLAG_OVERLOADED);
        m.stale_since = None;
        return d;
    }
    if flags & FLAG_OVERLOADED != 0 && queue <= m.overload_mark / 2 {
        // Caught up, whether or not it beats: once it gets nothing new, an idle worker
        // waits in epoll and does not beat.
        d.clear |= FLAG_OVERLOADED;
        m.growth = 0;
    }
    if advanced {
        m.pending_since = None;
        m.idle_returns = 0;
        if flags & FLAG_STALE != 0 {
            d.clear |= FLAG_STALE;
            m.stale_since = None;
        }
        if queue > last_queue {
            m.growth += 1;
        } else if queue < last_queue {
            m.growth = 0;
        }
        // Behind its siblings, not merely busy: on a host where every queue grows (all
        // workers saturated) steering around one helps nothing.
        let behind = queue >= OVERLOAD_MIN && queue >= OVERLOAD_FACTOR * obs.typical_queue;
        if flags & FLAG_OVERLOADED == 0 && m.growth >= OVERLOAD_READINGS && behind && !obs.alone {
            d.set |= FLAG_OVERLOADED;
            m.overload_mark = queue;
        }
        return d;
    }
    if queue == 0 {
        // Idle, or already rescued.
        m.pending_since = None;
        // A stalled worker that waits for events with nothing queued was starved of CPU,
        // not stopped: its queue went to a sibling, and as nothing is sent to it and an
        // idle loop has no timer, it would sleep in epoll_wait() for good, serving nothing,
        // without beating. Given connections again, it wakes and beats; if it takes none
        // within the threshold, the verdict comes back, and its next return waits twice as
        // long.
        if flags & FLAG_STALE != 0 && obs.waits_for_events && m.idle_return_due(now, threshold) {
            d.clear |= FLAG_STALE;
            d.idle_return = true;
            m.stale_since = None;
            m.idle_returns += 1;
        }
        return d;
    }
    let pending = *m.pending_since.get_or_insert(m.unseen_since.unwrap_or(now));
    let mut stale_since = m.stale_since;
    if flags & FLAG_STALE == 0 && now - pending >= threshold && !obs.alone {
        d.set |= FLAG_STALE;
        stale_since = Some(now);
        m.stale_since = stale_since;
    }
    if let Some(since) = stale_since.filter(|_| (flags | d.set) & FLAG_STALE != 0) {
        let settled = now - since >= tick_for(threshold);
        let not_again = m.last_rescue.is_none_or(|t| now - t >= threshold);
        if settled && not_again {
            d.rescue = true;
            m.last_rescue = Some(now);
        }
    }
    d
}

/// Verdicts off (threshold 0): the program still keeps new connections off leaving
/// sockets, and the watch only keeps the table true. A verdict from before the threshold
/// was set to 0 is lifted, nothing is judged or rescued, and a slot whose socket stopped
/// listening without retiring is freed after MISSING_GRACE_UNJUDGED.
fn housekeeping_only(m: &mut SlotMemory, flags: u32, obs: Observation, now: Instant) -> Decision {
    let mut d = Decision { clear: flags & (FLAG_STALE | FLAG_OVERLOADED), ..Decision::default() };
    m.last_beats = obs.beats;
    m.stale_since = None;
    match obs.queue {
        Queue::Missing => d.free = now - *m.missing_since.get_or_insert(now) >= MISSING_GRACE_UNJUDGED,
        Queue::Len(_) => m.missing_since = None,
        Queue::Unread => {}
    }
    d
}

/// A tick that did not read the queues: a moving heartbeat still brings a stalled worker
/// back (nothing else is decided without the queue).
fn judge_beats_only(m: &mut SlotMemory, flags: u32, obs: Observation, now: Instant) -> Decision {
    let mut d = Decision::default();
    let beats = obs.beats;
    track_unseen(m, beats != m.last_beats, &obs, now);
    if beats == m.last_beats || beats == 0 {
        return d;
    }
    m.last_beats = beats;
    m.pending_since = None;
    m.idle_returns = 0;
    if flags & FLAG_STALE != 0 {
        d.clear = FLAG_STALE;
        m.stale_since = None;
    }
    d
}

/// The clock of what waits unseen runs from the first unseen connection's arrival, as the
/// program stamped it. Without a stamp, a heartbeat restarts it, the first tick that sees
/// unseen connections starts it; either way a tick that sees none (the worker caught up
/// without beating, or nothing was sent) stops it.
fn track_unseen(m: &mut SlotMemory, advanced: bool, obs: &Observation, now: Instant) {
    if !obs.unseen {
        m.unseen_since = None;
    } else if let Some(at) = obs.unseen_at {
        m.unseen_since = Some(at.min(now));
    } else if advanced {
        m.unseen_since = Some(now);
    } else {
        m.unseen_since.get_or_insert(now);
    }
}

impl SlotMemory {
    /// Since when connections sent to it since its last heartbeat have waited, at least;
    /// None when there are none.
    pub(crate) fn unseen_since(&self) -> Option<Instant> {
        self.unseen_since
    }

    /// Whether a stalled slot has been out of the choice long enough to be given connections
    /// again should its owner wait for events with nothing queued: a threshold after the
    /// verdict, doubled at each such return since its last heartbeat.
    pub(crate) fn idle_return_due(&self, now: Instant, threshold: Duration) -> bool {
        let wait = threshold * (1 << self.idle_returns.min(IDLE_RETURN_DOUBLINGS));
        self.stale_since.is_some_and(|since| now - since >= wait)
    }

    /// Whether the watch should look in /proc now whether its owner waits for events: its
    /// idle return is due, and it was not looked at within the threshold (a stopped
    /// worker stays stalled for as long as it is stopped, and the watch ticks four times a
    /// threshold meanwhile). Records the look.
    pub(crate) fn probe_due(&mut self, now: Instant, threshold: Duration) -> bool {
        let due = self.idle_return_due(now, threshold) && self.last_probe.is_none_or(|at| now - at >= threshold);
        if due {
            self.last_probe = Some(now);
        }
        due
    }

    /// The heartbeat count this memory last saw.
    pub(crate) fn last_beats(&self) -> u64 {
        self.last_beats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steering::slots::{FLAG_CLAIMED, FLAG_MEMBER};

    const LIVE: u32 = FLAG_CLAIMED | FLAG_MEMBER;
    const T: Duration = Duration::from_millis(100);

    fn obs(beats: u64, queue: u32) -> Observation {
        Observation {
            beats,
            queue: Queue::Len(queue),
            unseen: false,
            unseen_at: None,
            alone: false,
            typical_queue: 0,
            waits_for_events: false,
        }
    }

    fn unseen(beats: u64, queue: Queue) -> Observation {
        Observation {
            beats,
            queue,
            unseen: true,
            unseen_at: None,
            alone: false,
            typical_queue: 0,
            waits_for_events: false,
        }
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
        let d = judge(&mut m, LIVE | FLAG_STALE, obs(5, 0), at(230), T);
        assert_eq!(d, Decision::default(), "nor does a threshold without connections, unless it waits for events");
        let d = judge(&mut m, LIVE | FLAG_STALE, obs(5, 2), at(240), T);
        assert!(!d.rescue, "not again within a threshold");
        let d = judge(&mut m, LIVE | FLAG_STALE, obs(5, 2), at(260), T);
        assert!(d.rescue, "stragglers are moved again later");
        let d = judge(&mut m, LIVE | FLAG_STALE, obs(6, 2), at(275), T);
        assert_eq!(d.clear, FLAG_STALE, "a moving heartbeat brings it back");
    }

    /// A stalled worker, its queue moved, then found waiting for events.
    fn stalled_and_rescued(m: &mut SlotMemory, t0: Instant) {
        judge(m, LIVE, obs(5, 0), t0, T);
        assert_eq!(judge(m, LIVE, obs(5, 3), t0 + T, T).set, 0);
        assert_eq!(judge(m, LIVE, obs(5, 3), t0 + 2 * T, T).set, FLAG_STALE);
    }

    fn waiting(beats: u64) -> Observation {
        Observation { waits_for_events: true, ..obs(beats, 0) }
    }

    #[test]
    fn a_stalled_worker_waiting_for_events_with_nothing_queued_returns_with_a_growing_back_off() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        stalled_and_rescued(&mut m, t0);
        let stale_at = t0 + 2 * T;
        // Its queue moved, it sleeps in epoll_wait(): back a threshold after the verdict.
        assert!(!m.idle_return_due(stale_at + T / 2, T));
        assert_eq!(judge(&mut m, LIVE | FLAG_STALE, waiting(5), stale_at + T / 2, T), Decision::default());
        assert!(m.idle_return_due(stale_at + T, T));
        let d = judge(&mut m, LIVE | FLAG_STALE, waiting(5), stale_at + T, T);
        assert_eq!((d.clear, d.idle_return), (FLAG_STALE, true));
        // It takes none of what it is sent for a threshold: stalled again, and its next
        // return waits two thresholds, then four.
        let back = stale_at + T;
        assert_eq!(judge(&mut m, LIVE, obs(5, 2), back + T / 4, T).set, 0);
        let stale_again = back + T / 4 + T;
        assert_eq!(judge(&mut m, LIVE, obs(5, 4), stale_again, T).set, FLAG_STALE);
        assert!(!m.idle_return_due(stale_again + T, T));
        assert!(!judge(&mut m, LIVE | FLAG_STALE, waiting(5), stale_again + T, T).idle_return);
        assert!(judge(&mut m, LIVE | FLAG_STALE, waiting(5), stale_again + 2 * T, T).idle_return);
        let third = stale_again + 2 * T + T;
        judge(&mut m, LIVE, obs(5, 1), third - T, T);
        assert_eq!(judge(&mut m, LIVE, obs(5, 1), third, T).set, FLAG_STALE);
        assert!(!m.idle_return_due(third + 3 * T, T));
        assert!(m.idle_return_due(third + 4 * T, T));
        // The back-off stops doubling at 64 thresholds.
        m.idle_returns = 40;
        assert!(!m.idle_return_due(third + 63 * T, T));
        assert!(m.idle_return_due(third + 64 * T, T));
        // A heartbeat brings it back and starts the back-off afresh.
        let d = judge(&mut m, LIVE | FLAG_STALE, obs(6, 0), third + 5 * T, T);
        assert_eq!((d.clear, d.idle_return), (FLAG_STALE, false));
        assert_eq!(m.idle_returns, 0);
    }

    #[test]
    fn the_watch_looks_in_proc_at_most_once_a_threshold_and_a_beat_on_any_tick_resets_the_back_off() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        stalled_and_rescued(&mut m, t0);
        let stale_at = t0 + 2 * T;
        assert!(!m.probe_due(stale_at + T / 2, T), "not before its return is due");
        assert!(m.probe_due(stale_at + T, T));
        assert!(!m.probe_due(stale_at + T + T / 4, T), "a stopped worker is not looked at every tick");
        assert!(m.probe_due(stale_at + 2 * T, T));
        // Returned once; a heartbeat seen on a tick that did not read the queues resets it.
        m.idle_returns = 3;
        let unread = Observation { queue: Queue::Unread, ..obs(6, 0) };
        assert_eq!(judge(&mut m, LIVE | FLAG_STALE, unread, stale_at + 3 * T, T).clear, FLAG_STALE);
        assert_eq!(m.idle_returns, 0);
    }

    #[test]
    fn only_a_slot_marked_stalled_is_rescued() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        stalled_and_rescued(&mut m, t0);
        let at = |k: u32| t0 + 2 * T + k * T;
        assert_eq!(judge(&mut m, LIVE | FLAG_STALE, obs(5, 0), at(1), T), Decision::default());
        // The flag is lifted elsewhere (another process, by hand): connections that queue
        // now are not rescued on the strength of the old verdict.
        let d = judge(&mut m, LIVE, obs(5, 3), at(3), T);
        assert_eq!((d.set, d.rescue), (0, false));
        // A slot that never beat: its flag is lifted, and nothing rescued.
        let mut m = SlotMemory::default();
        let d = judge(&mut m, LIVE | FLAG_STALE, obs(0, 5), t0, T);
        assert_eq!((d.clear, d.rescue), (FLAG_STALE, false));
    }

    #[test]
    fn a_stalled_worker_with_connections_queued_or_not_waiting_for_events_stays_out() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        stalled_and_rescued(&mut m, t0);
        let later = t0 + 10 * T;
        // Queued connections: it does not take them, whatever it sleeps in.
        let queued = Observation { waits_for_events: true, ..obs(5, 3) };
        assert_eq!(judge(&mut m, LIVE | FLAG_STALE, queued, later, T).clear, 0);
        // Stopped, or asleep elsewhere (waits_for_events false): out until it beats.
        assert_eq!(judge(&mut m, LIVE | FLAG_STALE, obs(5, 0), later + T, T), Decision::default());
    }

    #[test]
    fn threshold_zero_judges_nothing_lifts_old_verdicts_and_frees_what_stopped_listening() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        for k in 0..40 {
            let d = judge(&mut m, LIVE, unseen(5, Queue::Len(50 + k)), at(25 * k as u64), Duration::ZERO);
            assert_eq!(d, Decision::default(), "a still worker with a growing queue is not judged");
        }
        let d = judge(&mut m, LIVE | FLAG_STALE | FLAG_OVERLOADED, obs(5, 3), at(1000), Duration::ZERO);
        assert_eq!(d.clear, FLAG_STALE | FLAG_OVERLOADED, "verdicts from before the switch to 0 are lifted");
        assert!(!d.rescue);
        let d = judge(&mut m, LIVE, unseen(5, Queue::Unread), at(1100), Duration::ZERO);
        assert_eq!(d, Decision::default());
        assert!(!judge(&mut m, LIVE, obs(5, 0), at(1200), Duration::ZERO).free);
        let missing = Observation { queue: Queue::Missing, ..obs(5, 0) };
        assert!(!judge(&mut m, LIVE, missing, at(1300), Duration::ZERO).free, "not at once");
        assert!(judge(&mut m, LIVE, missing, at(1300) + MISSING_GRACE_UNJUDGED, Duration::ZERO).free);
    }

    #[test]
    fn a_busy_worker_is_not_stalled_and_a_growing_queue_is_overload() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        let mut flags = LIVE;
        for k in 0..=OVERLOAD_READINGS as u64 {
            let d = judge(&mut m, flags, obs(10 + k, 10 + 4 * k as u32), t0 + Duration::from_millis(25 * k), T);
            assert_eq!(d.set & FLAG_STALE, 0);
            flags |= d.set;
        }
        assert_ne!(flags & FLAG_OVERLOADED, 0, "grew at every reading");
        let d = judge(&mut m, flags, obs(100, 10), t0 + Duration::from_secs(1), T);
        assert_eq!(d.clear, FLAG_OVERLOADED, "back when the queue halved");
    }

    #[test]
    fn a_queue_growing_with_its_siblings_is_not_overload_and_an_idle_overloaded_worker_recovers() {
        let t0 = Instant::now();
        let at = |k: u64| t0 + Duration::from_millis(50 * k);
        // Every queue of the group grows alike (a saturated host): not behind anyone.
        let mut m = SlotMemory::default();
        for k in 0..8u64 {
            let o = Observation { typical_queue: 20 + 5 * k as u32, ..obs(10 + k, 20 + 5 * k as u32) };
            assert_eq!(judge(&mut m, LIVE, o, at(k), T).set, 0, "reading {k}");
        }
        // Behind: overloaded; then it gets nothing new, stops beating (idle in its event
        // loop) and its queue drains: back without a heartbeat.
        let mut m = SlotMemory::default();
        let mut flags = LIVE;
        for k in 0..=OVERLOAD_READINGS as u64 {
            let o = Observation { typical_queue: 2, ..obs(10 + k, 10 + 4 * k as u32) };
            flags |= judge(&mut m, flags, o, at(k), T).set;
        }
        assert_ne!(flags & FLAG_OVERLOADED, 0);
        let still = 10 + OVERLOAD_READINGS as u64;
        let d = judge(&mut m, flags, obs(still, 0), at(20), T);
        assert_eq!(d.clear, FLAG_OVERLOADED, "caught up, though its heartbeat stands still");
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
    fn without_the_queue_only_a_moving_heartbeat_counts() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        let unread = |beats| Observation {
            beats,
            queue: Queue::Unread,
            unseen: false,
            unseen_at: None,
            alone: false,
            typical_queue: 0,
            waits_for_events: false,
        };
        judge(&mut m, LIVE, obs(5, 4), t0, T);
        assert_eq!(judge(&mut m, LIVE | FLAG_STALE, unread(5), t0 + T, T), Decision::default());
        let d = judge(&mut m, LIVE | FLAG_STALE, unread(6), t0 + T, T);
        assert_eq!(d.clear, FLAG_STALE);
        assert_eq!(m.last_beats(), 6);
    }

    #[test]
    fn retiring_slots_are_left_alone_and_missing_sockets_freed() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        assert_eq!(judge(&mut m, LIVE | FLAG_RETIRING, obs(1, 100), t0, T), Decision::default());
        let gone = Observation {
            beats: 1,
            queue: Queue::Missing,
            unseen: false,
            unseen_at: None,
            alone: false,
            typical_queue: 0,
            waits_for_events: false,
        };
        assert!(!judge(&mut m, LIVE, gone, t0, T).free);
        assert!(judge(&mut m, LIVE, gone, t0 + T, T).free);
    }

    #[test]
    fn a_stall_is_timed_from_the_stamped_arrival_of_the_first_unseen_connection() {
        // The program stamped the first connection sent after the heartbeat at 10; the
        // first tick that sees it is at 60 (ticks are a threshold apart): the verdict
        // comes at 110, not a threshold after the tick.
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let stamped = |q| Observation { unseen_at: Some(at(10)), ..unseen(5, Queue::Len(q)) };
        judge(&mut m, LIVE, obs(5, 0), at(0), T);
        assert_eq!(judge(&mut m, LIVE, stamped(3), at(60), T).set, 0);
        assert_eq!(judge(&mut m, LIVE, stamped(4), at(109), T).set, 0);
        assert_eq!(judge(&mut m, LIVE, stamped(5), at(110), T).set, FLAG_STALE);
        // A heartbeat, then a new first unseen connection at 300: timed from there.
        judge(&mut m, LIVE, obs(6, 0), at(200), T);
        let later = |q| Observation { unseen_at: Some(at(300)), ..unseen(6, Queue::Len(q)) };
        assert_eq!(judge(&mut m, LIVE, later(1), at(350), T).set, 0);
        assert_eq!(judge(&mut m, LIVE, later(1), at(400), T).set, FLAG_STALE);
    }

    #[test]
    fn a_stall_is_timed_from_the_first_tick_that_saw_unseen_connections() {
        // The worker beat (5), then stopped; a connection was sent to it before the tick
        // at 0, which did not read the queues. The tick at 25 reads them: the stall's
        // clock started at 0, so the verdict comes at 100, the threshold after it.
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        judge(&mut m, LIVE, obs(4, 0), at(0) - Duration::from_millis(25), T);
        assert_eq!(judge(&mut m, LIVE, unseen(5, Queue::Unread), at(0), T), Decision::default());
        assert_eq!(judge(&mut m, LIVE, unseen(5, Queue::Len(2)), at(25), T).set, 0);
        assert_eq!(judge(&mut m, LIVE, unseen(5, Queue::Len(7)), at(75), T).set, 0);
        assert_eq!(judge(&mut m, LIVE, unseen(5, Queue::Len(9)), at(100), T).set, FLAG_STALE);
    }

    #[test]
    fn unseen_connections_a_looping_worker_picks_up_never_start_a_stall() {
        // Connections keep arriving between heartbeats (every tick sees some unseen), and
        // the queue is never empty when read, but the heartbeat moves at every tick.
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        for k in 0..40u64 {
            let d = judge(&mut m, LIVE, unseen(10 + k, Queue::Len(3)), t0 + Duration::from_millis(25 * k), T);
            assert_eq!(d.set & FLAG_STALE, 0, "tick {k}");
        }
    }

    #[test]
    fn an_idle_worker_woken_by_a_connection_is_not_stalled() {
        // Idle for seconds (old heartbeat); a tick catches a connection sent to it before
        // it woke (unseen, queued); it beats at once, so the next tick sees it moved.
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        judge(&mut m, LIVE, obs(5, 0), at(0), T);
        assert_eq!(judge(&mut m, LIVE, unseen(5, Queue::Len(1)), at(5000), T).set, 0);
        assert_eq!(judge(&mut m, LIVE, obs(6, 0), at(5025), T), Decision::default());
        // ...and an unseen connection caught later starts a new clock, not the old one.
        assert_eq!(judge(&mut m, LIVE, unseen(6, Queue::Len(1)), at(9000), T).set, 0);
        assert_eq!(judge(&mut m, LIVE, unseen(6, Queue::Len(1)), at(9075), T).set, 0);
        assert_eq!(judge(&mut m, LIVE, unseen(6, Queue::Len(1)), at(9100), T).set, FLAG_STALE);
    }

    #[test]
    fn the_last_eligible_worker_is_not_judged_until_a_sibling_is_back() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let alone = |queue| Observation {
            beats: 5,
            queue: Queue::Len(queue),
            unseen: true,
            unseen_at: None,
            alone: true,
            typical_queue: 0,
            waits_for_events: false,
        };
        judge(&mut m, LIVE, obs(5, 0), at(0), T);
        for ms in [25, 100, 200, 300] {
            let d = judge(&mut m, LIVE, alone(9), at(ms), T);
            assert_eq!(d, Decision::default(), "at {ms} ms");
        }
        // a sibling is eligible again: the verdict it has long deserved, then the rescue
        let d = judge(&mut m, LIVE, unseen(5, Queue::Len(9)), at(325), T);
        assert_eq!(d.set, FLAG_STALE);
        assert!(judge(&mut m, LIVE | FLAG_STALE, unseen(5, Queue::Len(9)), at(350), T).rescue);
    }
}
