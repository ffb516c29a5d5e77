//! The slot table a group's workers share: one slot per worker socket, with what the
//! program reads (the eligible list, flags, a load figure) and what the master's watch
//! needs (heartbeat, pid, fd, inode, backlog, queue). It lives in an mmap()able BPF array
//! map, so the master, the workers it forks and the program see the same memory; every
//! field is an atomic.
//!
//! The table's capacity (slots) is chosen when the master creates it, from what the
//! server asks for (reuseport_set_set_max_workers(): two generations of that many workers),
//! by default DEFAULT_CAPACITY.
//!
//! Layout (all little-endian words, offsets in bytes):
//!
//! ```text
//! header (64)   head: u32 = active list << 31 | eligible count      (program reads)
//!               unlisted: u32  workers the table could not hold      (program reads)
//!               dirty, built: u32  flag changes made / reflected in the list
//!               lock: u32 (pid), high: u32 (slots ever used), passed: u32 (program bumps)
//!               beating: u32  a worker of this group has beaten (new slots warm up)
//!               lock_at_ms: u64, opened_at_ms: u64
//!               fallback: u32  sockets of another binary in the sockarray after the slots
//!               generation: u32  bumped by each master open (a reload's, the first's)
//!               last_bind: u64  when a process of this server last bound a socket of
//!                 this group (the order of the next process's binds, set/bind_order.rs)
//! hot[cap]      per slot, 16 bytes, one cache line for four slots:
//!               flags, arrivals (program bumps), seen (arrivals at the owner's last
//!               heartbeat), load (the owner's published figure)
//! list[2][cap]  the two halves of the eligible list (eligible.rs)
//! beats[cap] inode[cap] unseen_at[cap]: u64;  pid[cap] fd[cap] backlog[cap] queue[cap]: u32
//! overflow[64]  pids of workers the table could not hold
//! claimed_in[cap]: u32  the generation current when the slot was claimed
//! ```

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use crate::sys::shared::SharedMemory;

/// Slots per group unless the server says how many workers it runs: two generations
/// (a reload or an upgrade) of 2,048 workers.
pub const DEFAULT_CAPACITY: usize = 4096;
/// The most slots a table may have: a map value stays well under the kernel's 4 MiB
/// limit for an array map's value (68 bytes a slot).
pub const MAX_CAPACITY: usize = 32768;
/// The fewest: a reload may raise a small server to 32 workers without outgrowing it.
pub const MIN_CAPACITY: usize = 64;
/// Workers beyond the capacity that can still be recorded (and given their share).
pub const OVERFLOW: usize = 64;
/// Sockets of another binary in the group (e.g. stock nginx's, inherited across an
/// upgrade) the program may send connections to when none of the slots may take them:
/// the sockarray holds them after the capacity's slots.
pub const FALLBACK_MAX: usize = 64;

/// The slot is taken by a process (set by compare-and-swap from 0).
pub const FLAG_CLAIMED: u32 = 1;
/// The slot's socket is in the sockarray.
pub const FLAG_MEMBER: u32 = 2;
/// The watch found the owner not accepting while connections wait.
pub const FLAG_STALE: u32 = 4;
/// The watch found the owner's queue growing while it runs.
pub const FLAG_OVERLOADED: u32 = 8;
/// The owner is leaving the group.
pub const FLAG_RETIRING: u32 = 16;
/// In the sockarray, but its owner's event loop has not run yet (no heartbeat since the
/// claim, in a group whose workers beat): connections sent to it would wait for its
/// start-up, so the eligible list holds it only while no other slot is eligible
/// (Steering::claim(), eligible.rs). The program does not look at it.
pub const FLAG_WARMING: u32 = 32;
/// The bits the program looks at: a listed slot may be selected when exactly FLAG_MEMBER
/// of them is set.
pub const FLAGS_ELIGIBILITY: u32 = FLAG_MEMBER | FLAG_STALE | FLAG_OVERLOADED | FLAG_RETIRING;

/// Whether the slot is listed for the program's choice.
pub fn eligible(flags: u32) -> bool {
    flags & (FLAGS_ELIGIBILITY | FLAG_WARMING) == FLAG_MEMBER
}

/// Whether the slot will serve what it is sent: eligible, or warming (its loop about to
/// run). Listed when nothing is eligible; a leaving sibling may leave the choice for it.
pub fn servable(flags: u32) -> bool {
    flags & FLAGS_ELIGIBILITY == FLAG_MEMBER
}

// Header offsets (the program reads HEAD, UNLISTED and bumps PASSED).
pub(crate) const HEAD: usize = 0;
pub(crate) const UNLISTED: usize = 4;
const DIRTY: usize = 8;
const BUILT: usize = 12;
const LOCK: usize = 16;
const HIGH: usize = 20;
pub(crate) const PASSED: usize = 24;
const BEATING: usize = 28;
const LOCK_AT: usize = 32;
const OPENED_AT: usize = 40;
pub(crate) const FALLBACK: usize = 48;
const GENERATION: usize = 52;
const LAST_BIND: usize = 56;
/// Where the per-slot hot records start.
pub(crate) const HOT: usize = 64;
/// Size of a hot record, and the offsets in it.
pub(crate) const HOT_SIZE: usize = 16;
pub(crate) const HOT_FLAGS: usize = 0;
pub(crate) const HOT_ARRIVALS: usize = 4;
pub(crate) const HOT_SEEN: usize = 8;
pub(crate) const HOT_LOAD: usize = 12;
/// The head's bit that says which half of the list is current.
pub(crate) const HEAD_HALF: u32 = 1 << 31;

/// The offsets of a table of `cap` slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub cap: usize,
    pub list: usize,
    beats: usize,
    inode: usize,
    pub unseen_at: usize,
    pid: usize,
    fd: usize,
    backlog: usize,
    queue: usize,
    overflow: usize,
    claimed_in: usize,
    /// The table's size in bytes: the value size of its map.
    pub size: usize,
}

impl Layout {
    pub(crate) fn new(cap: usize) -> Layout {
        assert!((1..=MAX_CAPACITY).contains(&cap), "capacity {cap}");
        let list = HOT + HOT_SIZE * cap;
        let beats = list + 2 * 4 * cap;
        let inode = beats + 8 * cap;
        let unseen_at = inode + 8 * cap;
        let pid = unseen_at + 8 * cap;
        let fd = pid + 4 * cap;
        let backlog = fd + 4 * cap;
        let queue = backlog + 4 * cap;
        let overflow = queue + 4 * cap;
        let claimed_in = overflow + 4 * OVERFLOW;
        let size = (claimed_in + 4 * cap).next_multiple_of(8);
        Layout { cap, list, beats, inode, unseen_at, pid, fd, backlog, queue, overflow, claimed_in, size }
    }
}

/// The slot capacity for a server of `max_workers` workers per generation (0: not said).
pub fn capacity_for(max_workers: usize) -> usize {
    if max_workers == 0 {
        DEFAULT_CAPACITY
    } else {
        max_workers.saturating_mul(2).clamp(MIN_CAPACITY, MAX_CAPACITY)
    }
}

/// The shared slot table of one group.
pub struct Table {
    mem: SharedMemory,
    layout: Layout,
}

impl Table {
    /// Maps the table map's value (the map must have been created mmap()able, with the
    /// layout's size).
    pub(crate) fn map(map: BorrowedFd<'_>, cap: usize) -> std::io::Result<Table> {
        let layout = Layout::new(cap);
        Ok(Table { mem: SharedMemory::map(map, layout.size)?, layout })
    }

    #[cfg(test)]
    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn capacity(&self) -> usize {
        self.layout.cap
    }

    /// The 32-bit word at byte `offset` of the table (what the program reads).
    #[cfg(test)]
    pub(crate) fn word(&self, offset: usize) -> &AtomicU32 {
        self.mem.u32_at(offset)
    }

    /// The 64-bit word at byte `offset` of the table.
    #[cfg(test)]
    pub(crate) fn dword(&self, offset: usize) -> &AtomicU64 {
        self.mem.u64_at(offset)
    }

    fn hot(&self, slot: usize, field: usize) -> &AtomicU32 {
        self.mem.u32_at(HOT + HOT_SIZE * self.check(slot) + field)
    }

    /// The slot's flags. Read them freely; change them only through the methods below,
    /// which keep the eligible list in step.
    pub fn flags(&self, slot: usize) -> &AtomicU32 {
        self.hot(slot, HOT_FLAGS)
    }

    /// Connections the program has sent to the slot (wraps).
    pub fn arrivals(&self, slot: usize) -> &AtomicU32 {
        self.hot(slot, HOT_ARRIVALS)
    }

    /// The slot's arrivals at its owner's last heartbeat: arrivals - seen is what was
    /// sent to it since, which the program counts as load.
    pub fn seen(&self, slot: usize) -> &AtomicU32 {
        self.hot(slot, HOT_SEEN)
    }

    /// The load figure its owner publishes (open connections; 0 when it says nothing).
    pub fn load(&self, slot: usize) -> &AtomicU32 {
        self.hot(slot, HOT_LOAD)
    }

    /// Heartbeats of the slot's owner so far.
    pub fn beats(&self, slot: usize) -> &AtomicU64 {
        self.mem.u64_at(self.layout.beats + 8 * self.check(slot))
    }

    pub fn inode(&self, slot: usize) -> &AtomicU64 {
        self.mem.u64_at(self.layout.inode + 8 * self.check(slot))
    }

    /// CLOCK_MONOTONIC_COARSE nanoseconds at which the first connection sent to the slot since its
    /// owner's last heartbeat arrived (0: not known). The program stamps it when it sends
    /// a slot its first connection after a heartbeat; the heartbeat stamps it when one
    /// arrived while it recorded `seen` (watch.rs). What the watch times a stall from.
    pub fn unseen_at(&self, slot: usize) -> &AtomicU64 {
        self.mem.u64_at(self.layout.unseen_at + 8 * self.check(slot))
    }

    /// The owner's pid; 0 while the slot is being claimed.
    pub fn pid(&self, slot: usize) -> &AtomicU32 {
        self.mem.u32_at(self.layout.pid + 4 * self.check(slot))
    }

    /// The owner's fd number for its socket (what a rescue duplicates).
    pub fn fd(&self, slot: usize) -> &AtomicI32 {
        self.mem.i32_at(self.layout.fd + 4 * self.check(slot))
    }

    pub fn backlog(&self, slot: usize) -> &AtomicI32 {
        self.mem.i32_at(self.layout.backlog + 4 * self.check(slot))
    }

    /// The accept queue length the watch saw last (for status reports).
    pub fn queue(&self, slot: usize) -> &AtomicU32 {
        self.mem.u32_at(self.layout.queue + 4 * self.check(slot))
    }

    /// A worker the table could not hold (its pid; 0 when the entry is free).
    pub fn overflow(&self, k: usize) -> &AtomicU32 {
        assert!(k < OVERFLOW);
        self.mem.u32_at(self.layout.overflow + 4 * k)
    }

    /// How many workers the table could not hold; while any, the program leaves every
    /// connection to the kernel's hash, so that they get their share too.
    pub fn unlisted(&self) -> &AtomicU32 {
        self.mem.u32_at(UNLISTED)
    }

    /// Connections the program left to the kernel's hash (nothing eligible, or unlisted
    /// workers): with the arrivals, what tells the watch whether anything arrived.
    pub fn passed(&self) -> &AtomicU32 {
        self.mem.u32_at(PASSED)
    }

    /// How many fallback sockets the sockarray holds after the slots (keys cap..cap+n).
    pub fn fallback(&self) -> &AtomicU32 {
        self.mem.u32_at(FALLBACK)
    }

    /// Non-zero once a worker of this group has called the heartbeat: from then on a new
    /// slot waits for its owner's first heartbeat before it is chosen.
    pub fn beating(&self) -> &AtomicU32 {
        self.mem.u32_at(BEATING)
    }

    /// One more than the highest slot ever claimed: loops over slots stop there.
    pub fn high(&self) -> usize {
        (self.mem.u32_at(HIGH).load(Ordering::Acquire) as usize).min(self.layout.cap)
    }

    pub(crate) fn raise_high(&self, slot: usize) {
        self.mem.u32_at(HIGH).fetch_max(slot as u32 + 1, Ordering::AcqRel);
    }

    /// Bumped after every change of a flag the program looks at (eligible.rs).
    pub(crate) fn dirty(&self) -> &AtomicU32 {
        self.mem.u32_at(DIRTY)
    }

    /// The value of `dirty` the current eligible list was built from.
    pub(crate) fn built(&self) -> &AtomicU32 {
        self.mem.u32_at(BUILT)
    }

    /// The pid of the process rebuilding the eligible list, 0 when none.
    pub(crate) fn lock(&self) -> &AtomicU32 {
        self.mem.u32_at(LOCK)
    }

    pub(crate) fn lock_at_ms(&self) -> &AtomicU64 {
        self.mem.u64_at(LOCK_AT)
    }

    /// The eligible list's head: which half is current, and how many entries it has.
    pub(crate) fn head(&self) -> &AtomicU32 {
        self.mem.u32_at(HEAD)
    }

    /// Entry `k` of half `half` of the eligible list.
    pub(crate) fn list(&self, half: usize, k: usize) -> &AtomicU32 {
        assert!(half < 2 && k < self.layout.cap);
        self.mem.u32_at(self.layout.list + 4 * (half * self.layout.cap + k))
    }

    /// CLOCK_MONOTONIC milliseconds of the master's latest open: a first worker is coming
    /// to adopt that socket (a reload), and a retiring worker may wait for it.
    pub fn opened_at_ms(&self) -> &AtomicU64 {
        self.mem.u64_at(OPENED_AT)
    }

    /// The group's generation: bumped by each master open, so a reload's workers claim
    /// their slots in a newer one than the workers they replace.
    pub fn generation(&self) -> &AtomicU32 {
        self.mem.u32_at(GENERATION)
    }

    /// CLOCK_MONOTONIC nanoseconds of the latest bind of a socket of this group by a
    /// process of this server (0: none recorded).
    pub fn last_bind_ns(&self) -> &AtomicU64 {
        self.mem.u64_at(LAST_BIND)
    }

    /// The generation current when the slot was claimed.
    pub fn claimed_in(&self, slot: usize) -> &AtomicU32 {
        self.mem.u32_at(self.layout.claimed_in + 4 * self.check(slot))
    }

    // ---- flag changes: each keeps the eligible list in step --------------------------------

    /// Sets `bits` in the slot's flags.
    pub fn set_flags(&self, slot: usize, bits: u32) {
        self.flags(slot).fetch_or(bits, Ordering::SeqCst);
        super::eligible::changed(self);
    }

    /// Clears `bits` in the slot's flags.
    pub fn clear_flags(&self, slot: usize, bits: u32) {
        self.flags(slot).fetch_and(!bits, Ordering::SeqCst);
        super::eligible::changed(self);
    }

    /// Replaces the slot's flags `old` by `new` if they are still `old`.
    pub fn replace_flags(&self, slot: usize, old: u32, new: u32) -> bool {
        let done = self.flags(slot).compare_exchange(old, new, Ordering::SeqCst, Ordering::Relaxed).is_ok();
        if done {
            super::eligible::changed(self);
        }
        done
    }

    fn check(&self, slot: usize) -> usize {
        assert!(slot < self.layout.cap, "slot {slot} of {}", self.layout.cap);
        slot
    }
}

/// A group as the watch and the rescue see it: its address, slot table and sockarray.
pub(crate) struct Group<'a> {
    pub addr: std::net::SocketAddr,
    pub table: &'a Table,
    pub sockarray: std::os::fd::BorrowedFd<'a>,
}

/// What a slot's owner is doing, as the C API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotState {
    /// Claimed, socket not in the map yet.
    Joining,
    Healthy,
    Stalled,
    Overloaded,
    Retiring,
}

/// One claimed slot, as reuseport_listener_get_slots() reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotStatus {
    pub slot: usize,
    pub pid: u32,
    pub state: SlotState,
    pub beats: u64,
    pub queue: u32,
}

pub fn state_of(flags: u32) -> SlotState {
    if flags & FLAG_RETIRING != 0 {
        SlotState::Retiring
    } else if flags & FLAG_STALE != 0 {
        SlotState::Stalled
    } else if flags & FLAG_OVERLOADED != 0 {
        SlotState::Overloaded
    } else if flags & FLAG_MEMBER != 0 && flags & FLAG_WARMING == 0 {
        SlotState::Healthy
    } else {
        SlotState::Joining
    }
}

/// A table in anonymous shared memory, for tests without CAP_BPF (the same layout and
/// code as a map's).
#[cfg(test)]
pub(crate) fn anonymous(cap: usize) -> Table {
    let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/zero").unwrap();
    Table::map(std::os::fd::AsFd::as_fd(&f), cap).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eligibility_needs_membership_and_nothing_else() {
        assert!(eligible(FLAG_CLAIMED | FLAG_MEMBER));
        assert!(!eligible(FLAG_CLAIMED));
        assert!(!eligible(FLAG_CLAIMED | FLAG_MEMBER | FLAG_WARMING));
        assert!(servable(FLAG_CLAIMED | FLAG_MEMBER | FLAG_WARMING));
        for bad in [FLAG_STALE, FLAG_OVERLOADED, FLAG_RETIRING] {
            assert!(!eligible(FLAG_CLAIMED | FLAG_MEMBER | bad));
        }
        assert_eq!(state_of(FLAG_CLAIMED | FLAG_MEMBER | FLAG_STALE | FLAG_RETIRING), SlotState::Retiring);
        assert_eq!(state_of(FLAG_CLAIMED | FLAG_MEMBER | FLAG_WARMING), SlotState::Joining);
    }

    #[test]
    fn the_layout_is_the_repr_c_layout_the_program_was_written_for() {
        const CAP: usize = 64;
        #[repr(C)]
        struct Hot {
            flags: u32,
            arrivals: u32,
            seen: u32,
            load: u32,
        }
        #[repr(C)]
        struct AsStruct {
            head: u32,
            unlisted: u32,
            dirty: u32,
            built: u32,
            lock: u32,
            high: u32,
            passed: u32,
            beating: u32,
            lock_at: u64,
            opened_at: u64,
            fallback: u32,
            generation: u32,
            last_bind: u64,
            hot: [Hot; CAP],
            list: [[u32; CAP]; 2],
            beats: [u64; CAP],
            inode: [u64; CAP],
            unseen_at: [u64; CAP],
            pid: [u32; CAP],
            fd: [i32; CAP],
            backlog: [i32; CAP],
            queue: [u32; CAP],
            overflow: [u32; OVERFLOW],
            claimed_in: [u32; CAP],
        }
        let l = Layout::new(CAP);
        assert_eq!(std::mem::offset_of!(AsStruct, passed), PASSED);
        assert_eq!(std::mem::offset_of!(AsStruct, beating), BEATING);
        assert_eq!(std::mem::offset_of!(AsStruct, opened_at), OPENED_AT);
        assert_eq!(std::mem::offset_of!(AsStruct, fallback), FALLBACK);
        assert_eq!(std::mem::offset_of!(AsStruct, generation), GENERATION);
        assert_eq!(std::mem::offset_of!(AsStruct, last_bind), LAST_BIND);
        assert_eq!(std::mem::offset_of!(AsStruct, hot), HOT);
        assert_eq!(std::mem::offset_of!(Hot, load), HOT_LOAD);
        assert_eq!(std::mem::offset_of!(AsStruct, list), l.list);
        assert_eq!(std::mem::offset_of!(AsStruct, beats), l.beats);
        assert_eq!(std::mem::offset_of!(AsStruct, unseen_at), l.unseen_at);
        assert_eq!(std::mem::offset_of!(AsStruct, queue), l.queue);
        assert_eq!(std::mem::offset_of!(AsStruct, overflow), l.overflow);
        assert_eq!(std::mem::offset_of!(AsStruct, claimed_in), l.claimed_in);
        assert_eq!(std::mem::size_of::<AsStruct>(), l.size);
    }

    #[test]
    fn capacity_covers_two_generations_of_what_the_server_asks_for() {
        assert_eq!(capacity_for(0), DEFAULT_CAPACITY);
        assert_eq!(capacity_for(200), 400, "two generations");
        assert_eq!(capacity_for(1), MIN_CAPACITY);
        assert_eq!(capacity_for(1024), 2048);
        assert_eq!(capacity_for(1 << 20), MAX_CAPACITY);
        assert!(Layout::new(MAX_CAPACITY).size < 4 << 20, "an array map's value is at most 4 MiB");
    }
}
