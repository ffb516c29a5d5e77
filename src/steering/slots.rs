//! The slot table a group's workers share: one slot per worker socket, with the flags the
//! program reads and what the master's watch needs (heartbeat, pid, fd, inode, backlog,
//! queue). It lives in an mmap()able BPF array map, so the master, the workers it forks
//! and the program see the same memory; every field is an atomic.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

use crate::sys::shared::SharedMemory;

/// Slots per group: workers of up to two generations (an upgrade) on a 64-core machine.
pub const SLOTS: usize = 128;

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
/// The bits the program looks at: eligible when exactly FLAG_MEMBER of them is set.
pub const FLAGS_ELIGIBILITY: u32 = FLAG_MEMBER | FLAG_STALE | FLAG_OVERLOADED | FLAG_RETIRING;

pub fn eligible(flags: u32) -> bool {
    flags & FLAGS_ELIGIBILITY == FLAG_MEMBER
}

// The layout, field by field, each an array of SLOTS. `flags` must stay first: the
// program reads flags[i] at offset 4 * i.
const FLAGS: usize = 0;
const BEATS: usize = FLAGS + 4 * SLOTS;
const INODE: usize = BEATS + 8 * SLOTS;
const PID: usize = INODE + 8 * SLOTS;
const FD: usize = PID + 4 * SLOTS;
const BACKLOG: usize = FD + 4 * SLOTS;
const QUEUE: usize = BACKLOG + 4 * SLOTS;
const OPENED_AT: usize = (QUEUE + 4 * SLOTS).next_multiple_of(8);
/// The table's size in bytes: the value size of its map.
pub(crate) const TABLE_SIZE: usize = OPENED_AT + 8;
const _: () = assert!(BEATS % 8 == 0 && INODE % 8 == 0 && FLAGS == 0);

/// The shared slot table of one group.
pub struct Table {
    mem: SharedMemory,
}

impl Table {
    /// Maps the table map's value (the map must have been created mmap()able, TABLE_SIZE).
    pub(crate) fn map(map: BorrowedFd<'_>) -> std::io::Result<Table> {
        Ok(Table { mem: SharedMemory::map(map, TABLE_SIZE)? })
    }

    pub fn flags(&self, slot: usize) -> &AtomicU32 {
        self.mem.u32_at(FLAGS + 4 * Self::check(slot))
    }

    /// Heartbeats of the slot's owner so far.
    pub fn beats(&self, slot: usize) -> &AtomicU64 {
        self.mem.u64_at(BEATS + 8 * Self::check(slot))
    }

    pub fn inode(&self, slot: usize) -> &AtomicU64 {
        self.mem.u64_at(INODE + 8 * Self::check(slot))
    }

    /// The owner's pid; 0 while the slot is being claimed.
    pub fn pid(&self, slot: usize) -> &AtomicU32 {
        self.mem.u32_at(PID + 4 * Self::check(slot))
    }

    /// The owner's fd number for its socket (what a rescue duplicates).
    pub fn fd(&self, slot: usize) -> &AtomicI32 {
        self.mem.i32_at(FD + 4 * Self::check(slot))
    }

    pub fn backlog(&self, slot: usize) -> &AtomicI32 {
        self.mem.i32_at(BACKLOG + 4 * Self::check(slot))
    }

    /// The accept queue length the watch saw last (for status reports).
    pub fn queue(&self, slot: usize) -> &AtomicU32 {
        self.mem.u32_at(QUEUE + 4 * Self::check(slot))
    }

    /// CLOCK_MONOTONIC milliseconds of the master's latest open: a first worker is coming
    /// to adopt that socket (a reload), and a retiring worker may wait for it.
    pub fn opened_at_ms(&self) -> &AtomicU64 {
        self.mem.u64_at(OPENED_AT)
    }

    fn check(slot: usize) -> usize {
        assert!(slot < SLOTS, "slot {slot} of {SLOTS}");
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
    } else if flags & FLAG_MEMBER != 0 {
        SlotState::Healthy
    } else {
        SlotState::Joining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eligibility_needs_membership_and_nothing_else() {
        assert!(eligible(FLAG_CLAIMED | FLAG_MEMBER));
        assert!(!eligible(FLAG_CLAIMED));
        for bad in [FLAG_STALE, FLAG_OVERLOADED, FLAG_RETIRING] {
            assert!(!eligible(FLAG_CLAIMED | FLAG_MEMBER | bad));
        }
        assert_eq!(state_of(FLAG_CLAIMED | FLAG_MEMBER | FLAG_STALE | FLAG_RETIRING), SlotState::Retiring);
    }

    #[test]
    fn the_layout_is_the_repr_c_layout_the_program_was_written_for() {
        // The same fields as a #[repr(C)] struct of arrays, which is what the program's
        // offsets (flags first, 4 bytes each) and the table's size assume.
        #[repr(C)]
        struct AsStruct {
            flags: [u32; SLOTS],
            beats: [u64; SLOTS],
            inode: [u64; SLOTS],
            pid: [u32; SLOTS],
            fd: [i32; SLOTS],
            backlog: [i32; SLOTS],
            queue: [u32; SLOTS],
            opened_at_ms: u64,
        }
        assert_eq!(std::mem::offset_of!(AsStruct, beats), BEATS);
        assert_eq!(std::mem::offset_of!(AsStruct, queue), QUEUE);
        assert_eq!(std::mem::offset_of!(AsStruct, opened_at_ms), OPENED_AT);
        assert_eq!(std::mem::size_of::<AsStruct>(), TABLE_SIZE);
    }
}
