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
/// Growing at this many consecutive ticks (two thresholds) makes a worker overloaded...
pub(crate) const OVERLOAD_TICKS: u32 = 8;
/// ...if at least this many connections wait.
const OVERLOAD_MIN: u32 = 16;

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
    stale_since: Option<Instant>,
    last_rescue: Option<Instant>,
    growth: u32,
    overload_mark: u32,
    missing_since: Option<Instant>,
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
}

/// The verdict on one claimed slot. Pure: every rule is unit-tested.
pub fn judge(m: &mut SlotMemory, flags: u32, obs: Observation, now: Instant, threshold: Duration) -> Decision {
    let mut d = Decision::default();
    if flags & FLAG_RETIRING != 0 {
        return d;
    }
    let queue = match obs.queue {
        Queue::Len(q) => q,
        Queue::Unread => return judge_beats_only(m, flags, obs.beats),
        Queue::Missing => {
            // Not listening any more (closed without retiring, or between shutdown and listen
            // of a rescue): free the slot if that lasts.
            let since = *m.missing_since.get_or_insert(now);
            d.free = now - since >= threshold;
            return d;
        }
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

/// A tick that did not read the queues: a moving heartbeat still brings a stalled worker
/// back (nothing else is decided without the queue).
fn judge_beats_only(m: &mut SlotMemory, flags: u32, beats: u64) -> Decision {
    let mut d = Decision::default();
    if beats == m.last_beats || beats == 0 {
        return d;
    }
    m.last_beats = beats;
    m.pending_since = None;
    if flags & FLAG_STALE != 0 {
        d.clear = FLAG_STALE;
        m.stale_since = None;
    }
    d
}

impl SlotMemory {
    /// Connections have been waiting (unseen by a still worker) since `since` at the
    /// latest: the watch saw them before it read the queue.
    pub(crate) fn waiting_since(&mut self, since: Instant) {
        self.pending_since = Some(self.pending_since.map_or(since, |p| p.min(since)));
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
        Observation { beats, queue: Queue::Len(queue) }
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
    fn without_the_queue_only_a_moving_heartbeat_counts() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        let unread = |beats| Observation { beats, queue: Queue::Unread };
        judge(&mut m, LIVE, obs(5, 4), t0, T);
        assert_eq!(judge(&mut m, LIVE | FLAG_STALE, unread(5), t0 + T, T), Decision::default());
        let d = judge(&mut m, LIVE | FLAG_STALE, unread(6), t0 + T, T);
        assert_eq!(d.clear, FLAG_STALE);
        assert_eq!(m.last_beats(), 6);
    }

    #[test]
    fn waiting_counts_from_when_the_watch_first_saw_it() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        judge(&mut m, LIVE, obs(5, 0), t0, T);
        m.waiting_since(t0 + Duration::from_millis(10));
        let d = judge(&mut m, LIVE, obs(5, 3), t0 + Duration::from_millis(110), T);
        assert_eq!(d.set, FLAG_STALE, "waited the threshold since it was first seen");
    }

    #[test]
    fn retiring_slots_are_left_alone_and_missing_sockets_freed() {
        let mut m = SlotMemory::default();
        let t0 = Instant::now();
        assert_eq!(judge(&mut m, LIVE | FLAG_RETIRING, obs(1, 100), t0, T), Decision::default());
        let gone = Observation { beats: 1, queue: Queue::Missing };
        assert!(!judge(&mut m, LIVE, gone, t0, T).free);
        assert!(judge(&mut m, LIVE, gone, t0 + T, T).free);
    }
}
