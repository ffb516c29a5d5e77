//! The steering program's selection rule, run instruction by instruction in the userspace
//! interpreter (interp.rs) over a real slot table in shared memory: no root needed.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;

use super::eligible;
use super::interp::{run, Mock, Run};
use super::program::assemble;
use super::slots::{anonymous, Table, FLAG_CLAIMED, FLAG_MEMBER, FLAG_OVERLOADED, FLAG_RETIRING, FLAG_STALE};
use crate::sys::bpf::{Insn, SK_PASS};

struct Rig {
    table: Table,
    insns: Vec<Insn>,
    fds: (File, File),
    /// The clock the program reads (bpf_ktime_get_ns).
    now_ns: std::cell::Cell<u64>,
}

impl Rig {
    /// A table of `cap` slots with `workers` eligible members in slots 0..workers.
    fn new(cap: usize, workers: usize) -> Rig {
        let table = anonymous(cap);
        let fds = (File::open("/dev/null").unwrap(), File::open("/dev/null").unwrap());
        let insns = assemble(table.layout(), fds.0.as_fd(), fds.1.as_fd());
        for s in 0..workers {
            join(&table, s);
        }
        Rig { table, insns, fds, now_ns: std::cell::Cell::new(1_000_000) }
    }

    fn run_with(&self, hash: u32, present: &dyn Fn(u32) -> bool) -> Run {
        let mock = Mock {
            table: &self.table,
            table_fd: self.fds.0.as_raw_fd(),
            sockarray_fd: self.fds.1.as_raw_fd(),
            present,
            now_ns: self.now_ns.get(),
        };
        let r = run(&self.insns, &mock, hash);
        assert_eq!(r.verdict, SK_PASS as u64, "never refuses");
        r
    }

    fn run(&self, hash: u32) -> Run {
        self.run_with(hash, &|_| true)
    }

    /// How many of `n` connections (spread-out hashes) each slot gets.
    fn spread(&self, n: u32) -> Vec<u32> {
        let mut got = vec![0u32; self.table.capacity()];
        for h in 0..n {
            if let Some(s) = self.run(hash(h)).selected {
                got[s as usize] += 1;
            }
        }
        got
    }
}

fn join(t: &Table, slot: usize) {
    t.raise_high(slot);
    t.set_flags(slot, FLAG_CLAIMED | FLAG_MEMBER);
}

/// What a heartbeat does to the figures the program reads (SlotClaim::beat()).
fn beat(t: &Table, slot: usize) {
    t.seen(slot).store(t.arrivals(slot).load(Ordering::SeqCst), Ordering::SeqCst);
}

/// A well-mixed 32-bit hash per connection, like the kernel's flow hash.
fn hash(i: u32) -> u32 {
    let mut x = i.wrapping_mul(0x9e37_79b9) ^ 0x5bd1_e995;
    x ^= x >> 15;
    x = x.wrapping_mul(0x2c1b_3c6d);
    x ^= x >> 12;
    x = x.wrapping_mul(0x297a_2d39);
    x ^ (x >> 15)
}

#[test]
fn the_cost_per_connection_does_not_grow_with_the_workers() {
    let mut seen = Vec::new();
    for (cap, workers) in [(8, 1), (8, 2), (128, 64), (512, 256), (4096, 1024), (4096, 4096)] {
        let rig = Rig::new(cap, workers);
        let max = (0..2000).map(|h| rig.run(hash(h)).steps).max().unwrap();
        seen.push((workers, rig.insns.len(), max));
    }
    for &(workers, len, max) in &seen {
        assert!(len < 200, "{workers} workers: {len} instructions");
        assert!(max <= 140, "{workers} workers: a connection ran {max} instructions");
    }
    let (lo, hi) = (seen.iter().map(|s| s.2).min().unwrap(), seen.iter().map(|s| s.2).max().unwrap());
    assert!(hi - lo <= 12, "steps per connection from 1 to 4096 workers: {seen:?}");
}

#[test]
fn equal_workers_get_an_even_spread() {
    for workers in [2usize, 7, 64, 1024] {
        let rig = Rig::new(4096, workers);
        let per = 200u32;
        let got = rig.spread(per * workers as u32);
        for (s, &n) in got.iter().enumerate().take(workers) {
            // The least loaded of four over arrivals since the last heartbeat keeps them
            // closer than hashing.
            assert!(n > per * 6 / 10 && n < per * 14 / 10, "{workers} workers: slot {s} got {n}, mean {per}");
        }
        assert!(got[workers..].iter().all(|&n| n == 0));
        let arrivals: u32 = (0..workers).map(|s| rig.table.arrivals(s).load(Ordering::Relaxed)).sum();
        assert_eq!(arrivals, per * workers as u32, "every selection counted on its slot");
    }
}

#[test]
fn stalled_overloaded_and_retiring_slots_get_nothing() {
    let rig = Rig::new(64, 8);
    rig.table.set_flags(1, FLAG_STALE);
    rig.table.set_flags(2, FLAG_OVERLOADED);
    rig.table.set_flags(3, FLAG_RETIRING);
    let got = rig.spread(4000);
    assert_eq!(&got[1..4], &[0, 0, 0]);
    assert!([0, 4, 5, 6, 7].iter().all(|&s| got[s] > 500), "{got:?}");
}

#[test]
fn a_slot_that_just_left_but_is_still_listed_is_skipped() {
    let rig = Rig::new(64, 4);
    // The race: flags changed, list not rebuilt yet.
    rig.table.flags(2).fetch_or(FLAG_STALE, Ordering::SeqCst);
    assert_eq!(eligible::current(&rig.table), vec![0, 1, 2, 3]);
    let got = rig.spread(4000);
    assert_eq!(got[2], 0, "{got:?}");
    assert_eq!(rig.table.passed().load(Ordering::Relaxed), 0, "the other candidate took them");
}

#[test]
fn a_gone_socket_leaves_the_connection_to_the_kernel() {
    let rig = Rig::new(64, 4);
    let gone = |s: u32| s != 1;
    let mut passed = 0;
    for h in 0..2000 {
        let r = rig.run_with(hash(h), &gone);
        assert_ne!(r.selected, Some(1));
        assert_eq!(r.select_calls, 1, "one attempt");
        passed += r.selected.is_none() as u32;
        if let Some(s) = r.selected {
            beat(&rig.table, s as usize); // the live workers take what they get
        }
    }
    assert!(passed >= 1, "the gone socket was chosen once");
    assert_eq!(rig.table.passed().load(Ordering::Relaxed), passed, "counted as left to the kernel");
    // What it was sent counts on its slot: its load rises, so the next connections go to
    // another candidate rather than to the kernel's hash, and the watch sees connections
    // its owner never takes.
    assert_eq!(rig.table.arrivals(1).load(Ordering::Relaxed), passed);
    assert!(passed < 5, "{passed} of 2000 left to the kernel's hash");
}

#[test]
fn nothing_eligible_or_a_worker_without_a_slot_leaves_it_to_the_kernel() {
    let rig = Rig::new(64, 0);
    assert_eq!(rig.run(5).selected, None);
    join(&rig.table, 0);
    join(&rig.table, 1);
    assert!(rig.run(5).selected.is_some());
    rig.table.unlisted().store(1, Ordering::SeqCst);
    let r = rig.run(5);
    assert_eq!((r.selected, r.select_calls), (None, 0), "an unlisted worker gets its share from the hash");
}

#[test]
fn with_nothing_listed_the_fallback_sockets_take_the_connections() {
    let rig = Rig::new(16, 2);
    rig.table.set_flags(0, FLAG_RETIRING);
    rig.table.set_flags(1, FLAG_RETIRING);
    assert_eq!(rig.run(5).selected, None, "no fallback: the kernel's hash");
    rig.table.fallback().store(3, Ordering::SeqCst);
    let mut got = [0u32; 3];
    for h in 0..3000 {
        let r = rig.run(hash(h));
        let key = r.selected.expect("a fallback socket") as usize;
        assert!((16..19).contains(&key), "key {key}");
        got[key - 16] += 1;
    }
    assert!(got.iter().all(|&n| n > 800), "spread by hash: {got:?}");
    // One of them closed (the kernel emptied its entry): left to the kernel's hash.
    let r = rig.run_with(hash(1), &|k| k != 16 + hash(1) % 3);
    assert_eq!((r.selected, r.select_calls), (None, 1));
    // Anything listed again: the slots, never the fallback.
    rig.table.clear_flags(1, FLAG_RETIRING);
    assert!((0..200).all(|h| rig.run(hash(h)).selected == Some(1)));
}

#[test]
fn a_loaded_worker_gets_fewer_new_connections() {
    // Two workers: the second candidate is always the other, so the busier never wins.
    let rig = Rig::new(8, 2);
    rig.table.load(0).store(50, Ordering::SeqCst);
    let mut got = [0u32; 2];
    for h in 0..1000 {
        let s = rig.run(hash(h)).selected.unwrap() as usize;
        got[s] += 1;
        beat(&rig.table, s);
    }
    assert_eq!(got, [0, 1000], "open connections count");
    // Without heartbeats, what was sent to the other since counts too: it evens out.
    let got = rig.spread(1000);
    assert!(got[0] > 0, "{got:?}");
    // Sixteen: one worker stops taking connections off its queue (no heartbeat): what
    // was sent to it since its last beat counts against it at once.
    let rig = Rig::new(32, 16);
    for s in 0..16 {
        rig.table.seen(s).store(0, Ordering::SeqCst);
    }
    let mut got = vec![0u32; 16];
    for h in 0..16_000 {
        let s = rig.run(hash(h)).selected.unwrap() as usize;
        got[s] += 1;
        if s != 3 {
            beat(&rig.table, s); // the others beat after every connection
        }
    }
    assert!(got[3] < 20, "the stopped worker got {} of 16000: {got:?}", got[3]);
    assert!(got.iter().enumerate().all(|(s, &n)| s == 3 || n > 800), "{got:?}");
}

#[test]
fn blocked_workers_get_nothing_while_another_is_free() {
    // Four workers, two of them blocked in a long request: each was sent a connection
    // since its last heartbeat. The two free ones take what they get at once. Two
    // neighbouring candidates would both be blocked for a quarter of the hashes.
    let rig = Rig::new(8, 4);
    for s in [0, 1] {
        rig.table.arrivals(s).fetch_add(1, Ordering::SeqCst);
    }
    let mut got = [0u32; 4];
    for h in 0..4000 {
        let s = rig.run(hash(h)).selected.unwrap() as usize;
        got[s] += 1;
        if s >= 2 {
            beat(&rig.table, s);
        }
    }
    assert_eq!(&got[..2], &[0, 0], "{got:?}");
    // Both free ones serve. Not evenly here: they beat after every connection, so their
    // scores tie at 0, and a tie goes to the first free candidate after the hash's
    // entry, which for three of the four entries is slot 2. A worker that has not yet
    // taken what it was sent loses the tie, which evens it out in a real event loop.
    assert!(got[2] > 400 && got[3] > 400, "{got:?}");
}

#[test]
fn the_first_connection_since_a_heartbeat_stamps_its_arrival() {
    let rig = Rig::new(8, 2);
    // Connections at time `at` until one goes to `slot` (the others go to its sibling).
    let to_slot = |slot: u32, at: u64| {
        rig.now_ns.set(at);
        assert!((0..1000).any(|h| rig.run(hash(h)).selected == Some(slot)), "slot {slot} never chosen");
    };
    for s in 0..2 {
        beat(&rig.table, s);
        rig.table.unseen_at(s).store(0, Ordering::SeqCst);
    }
    to_slot(0, 5_000);
    assert_eq!(rig.table.unseen_at(0).load(Ordering::SeqCst), 5_000, "the first unseen arrival");
    to_slot(0, 6_000);
    assert_eq!(rig.table.unseen_at(0).load(Ordering::SeqCst), 5_000, "not the later ones");
    beat(&rig.table, 0);
    to_slot(0, 7_000);
    assert_eq!(rig.table.unseen_at(0).load(Ordering::SeqCst), 7_000, "the first after the heartbeat");
}

#[test]
fn the_program_stays_inside_its_table_with_garbage_in_it() {
    // A torn or hostile table: the bounds checks keep every access inside (the
    // interpreter asserts each one), and the verdict is still SK_PASS.
    let rig = Rig::new(16, 4);
    for (off, v) in [(0usize, u32::MAX), (0, 0), (0, 17)] {
        rig.table.word(off).store(v, Ordering::SeqCst);
        assert_eq!(rig.run(99).selected, None);
    }
    rig.table.word(0).store(3, Ordering::SeqCst);
    rig.table.list(0, 1).store(1_000_000, Ordering::SeqCst);
    for h in 0..200 {
        let r = rig.run(hash(h));
        assert!(r.selected.is_none_or(|s| s < 16));
    }
}
