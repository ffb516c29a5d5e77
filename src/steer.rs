//! Health-aware steering: which socket of a reuseport group gets each new connection.
//!
//! The kernel hashes a new connection to one member of the group, whether or not that
//! member's process is accepting. Steering replaces that choice with the library's
//! program (steer_prog.rs), which chooses among the *eligible* members only.
//!
//! Per group (listen address), one master process creates, with CAP_BPF:
//! - a slot table: a one-element BPF array map created mmap()able. The master maps it
//!   before forking, so every worker shares the same memory. It holds, per slot, a flags
//!   word (the only part the program reads), a heartbeat counter, and the owner's pid, fd,
//!   socket inode and backlog, which the master's watch (health.rs) needs;
//! - a REUSEPORT_SOCKARRAY map: slot -> listen socket;
//! - the steering program over both, attached to the group from the master's socket.
//!
//! Privileges: only the creation needs CAP_BPF. A worker, privileged or not, claims a free
//! slot with a compare-and-swap on the shared memory and puts its own socket into the
//! sockarray through the inherited map fd (bpf(BPF_MAP_UPDATE_ELEM) on a map fd one holds
//! needs no capability). Heartbeats and flag changes are plain atomic operations on the
//! shared memory: no system call.
//!
//! The context lives as long as a set of the master holds it (a registry by address), and
//! a reload opens its new set before freeing the old one, so successive sets share it: old workers and new ones are slots of the same table, and a
//! retiring worker can see when a sibling is ready to take its connections. A new binary
//! (upgrade) creates its own and attaches its program, which from then on steers to the
//! new generation only; the old one drains.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use once_cell::sync::Lazy;

use crate::bpf;
use crate::log::{self, Level};

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

/// The shared slot table. `flags` must stay first: the program reads it at offset 0.
#[repr(C)]
pub struct Table {
    pub flags: [AtomicU32; SLOTS],
    pub beats: [AtomicU64; SLOTS],
    pub inode: [AtomicU64; SLOTS],
    pub pid: [AtomicU32; SLOTS],
    pub fd: [AtomicI32; SLOTS],
    pub backlog: [AtomicI32; SLOTS],
    /// The accept queue length the watch saw last (for status reports).
    pub queue: [AtomicU32; SLOTS],
    /// CLOCK_MONOTONIC milliseconds of the master's latest open: a first worker is coming
    /// to adopt that socket (a reload), and a retiring worker may wait for it.
    pub opened_at_ms: AtomicU64,
}

const TABLE_SIZE: usize = std::mem::size_of::<Table>();
const MAP_LEN: usize = TABLE_SIZE.div_ceil(4096) * 4096;

/// One group's steering context.
pub struct Steering {
    pub addr: SocketAddr,
    table_map: OwnedFd,
    sockarray: OwnedFd,
    program: OwnedFd,
    table: *const Table,
    /// What the master's watch remembers of each slot between ticks (health.rs).
    pub(crate) watch: Mutex<crate::health::WatchState>,
}

// SAFETY: `table` points into a MAP_SHARED mapping that lives as long as the Steering and
// is only accessed through atomics.
unsafe impl Send for Steering {}
unsafe impl Sync for Steering {}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Steering({}, program fd {})", self.addr, self.program.as_raw_fd())
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in create() with this length and is not used after.
        unsafe { libc::munmap(self.table as *mut libc::c_void, MAP_LEN) };
    }
}

impl Steering {
    /// Creates the maps and loads the program (needs CAP_BPF).
    fn create(addr: SocketAddr) -> io::Result<Steering> {
        let table_map =
            bpf::create_map(bpf::BPF_MAP_TYPE_ARRAY, TABLE_SIZE as u32, 1, bpf::BPF_F_MMAPABLE, b"reuseport_slots")?;
        let sockarray = bpf::create_map(bpf::BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 8, SLOTS as u32, 0, b"reuseport_socks")?;
        // SAFETY: mapping a map fd created mmap()able, for its whole (page-rounded) size.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAP_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                table_map.as_raw_fd(),
                0,
            )
        };
        if mem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let program = match crate::steer_prog::load(table_map.as_fd(), sockarray.as_fd()) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: unmapping what was mapped just above.
                unsafe { libc::munmap(mem, MAP_LEN) };
                return Err(e);
            }
        };
        Ok(Steering {
            addr,
            table_map,
            sockarray,
            program,
            table: mem as *const Table,
            watch: Mutex::new(Default::default()),
        })
    }

    pub fn table(&self) -> &Table {
        // SAFETY: see the Send/Sync note; the memory is zeroed by the kernel at creation.
        unsafe { &*self.table }
    }

    pub fn program(&self) -> BorrowedFd<'_> {
        self.program.as_fd()
    }

    pub fn sockarray(&self) -> BorrowedFd<'_> {
        self.sockarray.as_fd()
    }

    /// The table map's fd (kept open so the program and the mapping outlive the master's
    /// sets; also what a debugger would dump).
    pub fn table_fd(&self) -> BorrowedFd<'_> {
        self.table_map.as_fd()
    }

    /// The master opened a socket of this group: its first worker will claim a slot soon.
    pub fn note_open(&self) {
        self.table().opened_at_ms.store(monotonic_ms(), Ordering::Release);
    }

    /// Whether another socket of the group may become eligible soon: a slot other than
    /// `except` being claimed or stalled, or a master's open less than `within` ago (its
    /// first worker is starting). Another generation's sockets (an upgrade) are not in
    /// this table and are not waited for: its program chooses among its own slots.
    pub fn sibling_coming(&self, except: usize, within: std::time::Duration) -> bool {
        let t = self.table();
        let claimed_elsewhere = (0..SLOTS).any(|i| {
            let f = t.flags[i].load(Ordering::Acquire);
            i != except && f & FLAG_CLAIMED != 0 && f & FLAG_RETIRING == 0
        });
        let opened = t.opened_at_ms.load(Ordering::Acquire);
        claimed_elsewhere || (opened != 0 && monotonic_ms().saturating_sub(opened) < within.as_millis() as u64)
    }

    /// Whether some slot other than `except` is eligible now.
    pub fn has_eligible(&self, except: &[usize]) -> bool {
        let t = self.table();
        (0..SLOTS).any(|i| !except.contains(&i) && eligible(t.flags[i].load(Ordering::Acquire)))
    }

    /// Takes a free slot for `sock` (held by this process as `fd`) and puts the socket
    /// into the sockarray: from then on the program may choose it.
    pub fn claim(self: &Arc<Self>, sock: BorrowedFd<'_>, inode: u64, backlog: i32) -> Result<SlotClaim, String> {
        let t = self.table();
        let free = |i: usize| t.flags[i].compare_exchange(0, FLAG_CLAIMED, Ordering::AcqRel, Ordering::Relaxed).is_ok();
        // A slot whose owner died without freeing it (killed) is free too: the master's
        // watch frees those, but a server may not run one.
        let orphaned = |i: usize| {
            let f = t.flags[i].load(Ordering::Acquire);
            let pid = t.pid[i].load(Ordering::Relaxed);
            f != 0
                && pid != 0 // 0: being claimed right now
                && !crate::health::alive(pid)
                && t.flags[i].compare_exchange(f, FLAG_CLAIMED, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        };
        let slot = (0..SLOTS)
            .find(|&i| free(i))
            .or_else(|| (0..SLOTS).find(|&i| orphaned(i)))
            .ok_or_else(|| format!("all {SLOTS} steering slots are taken (more workers than the library supports)"))?;
        t.beats[slot].store(0, Ordering::Relaxed);
        t.queue[slot].store(0, Ordering::Relaxed);
        t.pid[slot].store(std::process::id(), Ordering::Relaxed);
        t.fd[slot].store(sock.as_raw_fd(), Ordering::Relaxed);
        t.inode[slot].store(inode, Ordering::Relaxed);
        t.backlog[slot].store(backlog, Ordering::Relaxed);
        if let Err(e) = bpf::sockarray_set(self.sockarray(), slot as u32, sock) {
            t.flags[slot].store(0, Ordering::Release);
            return Err(format!("cannot put the socket into the steering map (bpf map update): {e}"));
        }
        t.flags[slot].fetch_or(FLAG_MEMBER, Ordering::AcqRel);
        Ok(SlotClaim { steering: Arc::clone(self), slot, owner: std::process::id() })
    }
}

fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// A slot this process holds; dropping it (after the socket is closed) frees the slot.
#[derive(Debug)]
pub struct SlotClaim {
    pub steering: Arc<Steering>,
    pub slot: usize,
    owner: u32,
}

impl SlotClaim {
    pub fn beat(&self) {
        self.steering.table().beats[self.slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the slot out of the program's choice; its socket stays open.
    pub fn mark_retiring(&self) {
        self.steering.table().flags[self.slot].fetch_or(FLAG_RETIRING, Ordering::AcqRel);
    }
}

impl Drop for SlotClaim {
    fn drop(&mut self) {
        // A process forked from the owner drops a copy, not the claim.
        if std::process::id() == self.owner {
            let t = self.steering.table();
            t.pid[self.slot].store(0, Ordering::Relaxed);
            t.flags[self.slot].store(0, Ordering::Release);
        }
    }
}

/// The steering context of each address this process opened as a master, while a set
/// holds it: a reload opens the new set before freeing the old one, so the context
/// carries over; a process whose sets are all freed holds none of its fds (see the module
/// doc).
static REGISTRY: Lazy<Mutex<HashMap<SocketAddr, Weak<Steering>>>> = Lazy::new(Default::default);

/// The context for `addr`, created on first use. Errors are errnos (EPERM without CAP_BPF).
pub fn for_group(addr: SocketAddr) -> Result<Arc<Steering>, i32> {
    let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|_, w| w.strong_count() > 0);
    if let Some(s) = reg.get(&addr).and_then(Weak::upgrade) {
        return Ok(s);
    }
    let s = Arc::new(Steering::create(addr).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?);
    log::emit(Level::Debug, &format!("{addr}: steering program loaded ({SLOTS} slots)"));
    reg.insert(addr, Arc::downgrade(&s));
    Ok(s)
}

/// Whether this process can create a steering context (maps and program): Ok, or the
/// errno (EPERM without CAP_BPF). Creates one and frees it at once.
pub fn can_steer() -> Result<(), i32> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Steering::create(any).map(drop).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// Whether this process may take a duplicate of its workers' sockets (the rescue):
/// CAP_SYS_PTRACE in its effective set.
pub fn can_rescue() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

/// What a slot's owner is doing, as the C API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Claimed, socket not in the map yet.
    Joining,
    Healthy,
    Stalled,
    Overloaded,
    Retiring,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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

impl Steering {
    /// Every claimed slot, in slot order.
    pub fn status(&self) -> Vec<SlotStatus> {
        let t = self.table();
        (0..SLOTS)
            .filter_map(|i| {
                let flags = t.flags[i].load(Ordering::Acquire);
                (flags & FLAG_CLAIMED != 0).then(|| SlotStatus {
                    slot: i,
                    pid: t.pid[i].load(Ordering::Relaxed),
                    state: state_of(flags),
                    beats: t.beats[i].load(Ordering::Relaxed),
                    queue: t.queue[i].load(Ordering::Relaxed),
                })
            })
            .collect()
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
    fn the_table_fits_the_map_and_flags_come_first() {
        assert_eq!(std::mem::offset_of!(Table, flags), 0);
        assert!(TABLE_SIZE <= MAP_LEN);
    }
}
