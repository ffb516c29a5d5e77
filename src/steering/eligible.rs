//! The eligible list: the dense array of eligible slot numbers the program chooses from,
//! so that its cost per connection does not depend on how many workers there are.
//!
//! Who writes it. Flags change in several processes: a worker claims, retires or frees its
//! slot; the master's watch marks slots stalled or overloaded and back. Each change is
//! followed by changed(): bump `dirty`, then rebuild the list if no other process is
//! rebuilding it right now. The rebuild scans the flags (up to the highest slot ever
//! used: microseconds for thousands) into the half of the list that is not current and
//! then publishes it with one store of the head word (half and count together), so the
//! program always reads a count that belongs to the half it reads.
//!
//! One rebuilder at a time: a lock word holding the rebuilder's pid, taken by
//! compare-and-swap and never waited for. A writer that finds it taken leaves: it bumped
//! `dirty` before trying, and the holder compares `dirty` with what it built after
//! releasing the lock, and builds again if they differ (SeqCst throughout, so either the
//! holder sees the bump or the writer sees the lock free). A holder that died or stopped
//! for longer than STEAL_AFTER_MS (SIGSTOP inside the few microseconds of a rebuild) loses
//! the lock to the next writer; should a stopped holder resume and publish a stale list
//! after that, the next change or watch tick (which rebuilds when `dirty` and `built`
//! differ) replaces it.
//!
//! What a racing reader may see: a list a moment old. Every entry is a slot number below
//! the capacity, so at worst the program picks a slot that has just become ineligible;
//! it checks the slot's flags before selecting it, and a socket that is gone fails the
//! selection: then the other candidate, then the kernel's hash. Nothing is refused.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use super::slots::{eligible, servable, Table, HEAD_HALF};
use crate::sys::procfs;

/// A lock older than this is taken over (a rebuild takes microseconds).
const STEAL_AFTER_MS: u64 = 100;

/// A flag the program looks at changed: bring the list up to date (or leave it to the
/// process rebuilding it now).
pub(crate) fn changed(t: &Table) {
    t.dirty().fetch_add(1, SeqCst);
    rebuild_if_dirty(t);
}

/// Rebuilds the list while flags changed since it was last built and no other process is
/// at it. The watch calls it on every tick too, which catches a change whose rebuild was
/// lost to a stopped or killed process.
pub(crate) fn rebuild_if_dirty(t: &Table) {
    while t.dirty().load(SeqCst) != t.built().load(SeqCst) {
        if !try_lock(t) {
            return;
        }
        let d = t.dirty().load(SeqCst);
        rebuild(t);
        t.built().store(d, SeqCst);
        t.lock().store(0, SeqCst);
    }
}

fn try_lock(t: &Table) -> bool {
    let me = std::process::id();
    let now = procfs::monotonic_ms();
    let won = match t.lock().compare_exchange(0, me, SeqCst, SeqCst) {
        Ok(_) => true,
        Err(holder) => {
            let old = now.saturating_sub(t.lock_at_ms().load(Acquire)) > STEAL_AFTER_MS;
            (old || !procfs::alive(holder)) && t.lock().compare_exchange(holder, me, SeqCst, SeqCst).is_ok()
        }
    };
    if won {
        t.lock_at_ms().store(now, Release);
    }
    won
}

/// Writes the eligible slots into the other half and makes it current. With none, the
/// warming ones (a reload's new workers about to serve) rather than the kernel's hash over
/// every member, leaving ones included.
fn rebuild(t: &Table) {
    let half = (t.head().load(Acquire) & HEAD_HALF != 0) as usize;
    let next = 1 - half;
    let mut n = 0;
    for listed in [eligible as fn(u32) -> bool, servable] {
        for slot in 0..t.high() {
            if listed(t.flags(slot).load(SeqCst)) {
                t.list(next, n).store(slot as u32, Relaxed);
                n += 1;
            }
        }
        if n > 0 {
            break;
        }
    }
    let head = if next == 1 { HEAD_HALF } else { 0 } | n as u32;
    t.head().store(head, Release);
}

/// The current list, as the program sees it.
#[cfg(test)]
pub(crate) fn current(t: &Table) -> Vec<usize> {
    let head = t.head().load(Acquire);
    let half = (head & HEAD_HALF != 0) as usize;
    (0..(head & !HEAD_HALF) as usize).map(|k| t.list(half, k).load(Relaxed) as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steering::slots::{anonymous, FLAG_CLAIMED, FLAG_MEMBER, FLAG_RETIRING, FLAG_STALE};

    fn live(t: &Table, slot: usize) {
        t.raise_high(slot);
        t.set_flags(slot, FLAG_CLAIMED | FLAG_MEMBER);
    }

    #[test]
    fn the_list_follows_every_flag_change_and_flips_halves() {
        let t = anonymous(16);
        assert!(current(&t).is_empty());
        for s in [0, 3, 5, 9] {
            live(&t, s);
        }
        assert_eq!(current(&t), vec![0, 3, 5, 9]);
        let half = t.head().load(Acquire) & HEAD_HALF;
        t.set_flags(3, FLAG_STALE);
        assert_ne!(t.head().load(Acquire) & HEAD_HALF, half, "published in the other half");
        assert_eq!(current(&t), vec![0, 5, 9]);
        t.set_flags(9, FLAG_RETIRING);
        t.clear_flags(3, FLAG_STALE);
        assert_eq!(current(&t), vec![0, 3, 5]);
        assert!(t.replace_flags(0, FLAG_CLAIMED | FLAG_MEMBER, 0));
        assert_eq!(current(&t), vec![3, 5]);
        assert_eq!(t.dirty().load(SeqCst), t.built().load(SeqCst));
    }

    #[test]
    fn a_change_made_while_another_process_rebuilds_is_picked_up_later() {
        let t = anonymous(16);
        live(&t, 1);
        // Another (live) process holds the lock: this change only marks the list dirty.
        let other = std::os::unix::process::parent_id();
        t.lock().store(other, SeqCst);
        // Taken "in the future": not stale however slowly this test runs.
        t.lock_at_ms().store(procfs::monotonic_ms() + 3_600_000, SeqCst);
        live(&t, 2);
        assert_eq!(current(&t), vec![1], "not rebuilt under someone else's lock");
        // It finishes: the next tick (or change) rebuilds.
        t.lock().store(0, SeqCst);
        rebuild_if_dirty(&t);
        assert_eq!(current(&t), vec![1, 2]);
    }

    #[test]
    fn a_lock_held_by_a_dead_or_stuck_process_is_taken_over() {
        let t = anonymous(16);
        live(&t, 1);
        t.lock().store(u32::MAX - 1, SeqCst); // no such process
        t.lock_at_ms().store(procfs::monotonic_ms(), SeqCst);
        live(&t, 4);
        assert_eq!(current(&t), vec![1, 4]);
        t.lock().store(std::os::unix::process::parent_id(), SeqCst);
        t.lock_at_ms().store(procfs::monotonic_ms() - 2 * STEAL_AFTER_MS, SeqCst);
        t.set_flags(1, FLAG_STALE);
        assert_eq!(current(&t), vec![4], "a lock older than a rebuild can take is stale");
        assert_eq!(t.lock().load(SeqCst), 0);
    }
}
