//! Health-aware steering: which socket of a reuseport group gets each new connection.
//!
//! The kernel hashes a new connection to one member of the group, whether or not that
//! member's process is accepting. Steering replaces that choice with the library's
//! program (program.rs), which chooses among the *eligible* members only.
//!
//! Per group (listen address), one master process creates, with CAP_BPF:
//! - a slot table: a one-element BPF array map created mmap()able. The master maps it
//!   before forking, so every worker shares the same memory. It holds, per slot, a flags
//!   word (the only part the program reads), a heartbeat counter, and the owner's pid, fd,
//!   socket inode and backlog, which the master's watch (watch.rs) needs;
//! - a REUSEPORT_SOCKARRAY map: slot -> listen socket;
//! - the steering program over both, attached to the group from the master's socket.
//!
//! Privileges: only the creation needs CAP_BPF. A worker, privileged or not, claims a free
//! slot with a compare-and-swap on the shared memory and puts its own socket into the
//! sockarray through the inherited map fd (bpf(BPF_MAP_UPDATE_ELEM) on a map fd one holds
//! needs no capability). Heartbeats and flag changes are plain atomic operations on the
//! shared memory: no system call.
//!
//! The context lives as long as a set holds it. A reload's new set inherits it from the
//! set it replaces (Set::inherit()), so old workers and new ones are slots of the same
//! table, and a retiring worker can see when a sibling is ready to take its connections.
//! A new binary (upgrade) creates its own and attaches its program, which from then on
//! steers to the new generation only; the old one drains.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::log::{self, Level};
use crate::sys::{bpf, diag, procfs};

mod asm;
mod eligible;
#[cfg(test)]
mod interp;
mod program;
#[cfg(test)]
mod program_tests;
mod rescue;
mod slots;
pub(crate) mod verdict;
mod watch;

#[cfg(test)]
mod tests;

pub use slots::{capacity_for, SlotState, SlotStatus, Table};
use slots::{servable, state_of, Group, Layout, OVERFLOW};
use slots::{FLAG_CLAIMED, FLAG_MEMBER, FLAG_OVERLOADED, FLAG_RETIRING, FLAG_STALE, FLAG_WARMING};

/// One group's steering context.
pub struct Steering {
    pub addr: SocketAddr,
    /// Held so the slot table's map outlives every set of this master (the mapping and the
    /// program hold it too; bpftool finds it by this fd).
    _table_map: OwnedFd,
    sockarray: OwnedFd,
    program: OwnedFd,
    table: Table,
    /// What the master's watch remembers of each slot between ticks (watch.rs).
    watch: Mutex<watch::WatchState>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Steering({}, program fd {})", self.addr, self.program.as_raw_fd())
    }
}

impl Steering {
    /// Creates the maps for `cap` slots and loads the program (needs CAP_BPF). An error
    /// says which step failed.
    fn create(addr: SocketAddr, cap: usize) -> Result<Steering, CreateError> {
        let layout = Layout::new(cap);
        let step =
            |step: &'static str| move |e: io::Error| CreateError { errno: e.raw_os_error().unwrap_or(libc::EIO), step };
        let table_map =
            bpf::create_map(bpf::BPF_MAP_TYPE_ARRAY, layout.size as u32, 1, bpf::BPF_F_MMAPABLE, b"reuseport_slots")
                .map_err(step("bpf(BPF_MAP_CREATE) of the slot table"))?;
        let keys = (cap + slots::FALLBACK_MAX) as u32;
        let sockarray = bpf::create_map(bpf::BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 8, keys, 0, b"reuseport_socks")
            .map_err(step("bpf(BPF_MAP_CREATE) of the socket array"))?;
        let table = Table::map(table_map.as_fd(), cap).map_err(step("mmap of the slot table"))?;
        let program = program::load(&layout, table_map.as_fd(), sockarray.as_fd())
            .map_err(step("bpf(BPF_PROG_LOAD) of the steering program"))?;
        Ok(Steering { addr, _table_map: table_map, sockarray, program, table, watch: Mutex::new(Default::default()) })
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Puts a socket of another binary in this group (see Set::add_fallback) among the
    /// fallback targets. Ok(false) when the fallback keys are all used.
    pub(crate) fn add_fallback(&self, sock: BorrowedFd<'_>) -> io::Result<bool> {
        let t = &self.table;
        let n = t.fallback().load(Ordering::Acquire) as usize;
        if n >= slots::FALLBACK_MAX {
            return Ok(false);
        }
        // The entry first, then the count the program reads: it never selects a key not
        // yet set (and an entry whose socket closed since fails the selection harmlessly).
        bpf::sockarray_set(self.sockarray(), (t.capacity() + n) as u32, sock)?;
        t.fallback().store(n as u32 + 1, Ordering::Release);
        Ok(true)
    }

    pub fn program(&self) -> BorrowedFd<'_> {
        self.program.as_fd()
    }

    pub fn sockarray(&self) -> BorrowedFd<'_> {
        self.sockarray.as_fd()
    }

    pub(crate) fn family(&self) -> i32 {
        if self.addr.is_ipv6() {
            libc::AF_INET6
        } else {
            libc::AF_INET
        }
    }

    /// Attaches this group's program through member socket `sock` (for the whole group).
    pub(crate) fn attach(&self, sock: BorrowedFd<'_>) -> io::Result<()> {
        bpf::attach(sock, self.program())
    }

    /// The master opened a socket of this group: its first worker will claim a slot soon.
    pub fn note_open(&self) {
        self.table.generation().fetch_add(1, Ordering::AcqRel);
        self.table.opened_at_ms().store(procfs::monotonic_ms(), Ordering::Release);
    }

    /// This process bound a socket of this group just now (see set/bind_order.rs).
    pub fn note_bind(&self) {
        self.table.last_bind_ns().store(procfs::monotonic_ns(), Ordering::Release);
    }

    /// When a process of this server last bound a socket of this group (0: never
    /// recorded).
    pub fn last_bind_ns(&self) -> u64 {
        self.table.last_bind_ns().load(Ordering::Acquire)
    }

    /// Whether a newer generation of the group (a reload's workers) is still taking over
    /// from `slot`'s: the master opened one since `slot` was claimed, and fewer of its
    /// slots are eligible than this and older generations keep in the choice, while more
    /// of them are on the way (claimed, not yet beating) or none is eligible yet. A
    /// smaller new generation (fewer workers) replaces the old once all of it is in.
    /// Another binary's workers (an upgrade) are not in this table and are not waited for.
    pub fn successors_pending(&self, slot: usize) -> bool {
        let t = &self.table;
        let mine = t.claimed_in(slot).load(Ordering::Acquire);
        // Generations wrap: newer is ahead by less than half the range.
        let newer = |g: u32| (g.wrapping_sub(mine) as i32) > 0;
        if !newer(t.generation().load(Ordering::Acquire)) {
            return false;
        }
        let (mut newer_eligible, mut newer_starting, mut older_in_choice) = (0usize, 0usize, 0usize);
        for i in 0..t.high() {
            let f = t.flags(i).load(Ordering::Acquire);
            if f & FLAG_CLAIMED == 0 || f & FLAG_RETIRING != 0 {
                continue;
            }
            if !newer(t.claimed_in(i).load(Ordering::Acquire)) {
                older_in_choice += 1;
            } else if slots::eligible(f) {
                newer_eligible += 1;
            } else if f & (FLAG_STALE | FLAG_OVERLOADED) == 0 {
                newer_starting += 1;
            }
        }
        newer_eligible < older_in_choice && (newer_starting > 0 || newer_eligible == 0)
    }

    /// Whether another socket of the group may become eligible soon: a slot other than
    /// `except` being claimed or stalled, or a master's open less than `within` ago (its
    /// first worker is starting). Another generation's sockets (an upgrade) are not in
    /// this table and are not waited for: its program chooses among its own slots.
    pub fn sibling_coming(&self, except: usize, within: Duration) -> bool {
        let t = &self.table;
        let claimed_elsewhere = (0..t.high()).any(|i| {
            let f = t.flags(i).load(Ordering::Acquire);
            i != except && f & FLAG_CLAIMED != 0 && f & FLAG_RETIRING == 0
        });
        let opened = t.opened_at_ms().load(Ordering::Acquire);
        claimed_elsewhere || (opened != 0 && procfs::monotonic_ms().saturating_sub(opened) < within.as_millis() as u64)
    }

    /// Whether some slot other than `except` will take what it is sent: eligible, or
    /// warming (listed when nothing else is eligible; its loop is about to run).
    pub fn has_servable(&self, except: &[usize]) -> bool {
        (0..self.table.high()).any(|i| !except.contains(&i) && servable(self.table.flags(i).load(Ordering::Acquire)))
    }

    /// Takes a free slot for `sock` (held by this process as `fd`) and puts the socket
    /// into the sockarray: from then on the program may choose it. When every slot is
    /// taken, the worker is recorded as unlisted instead, and while it is, the program
    /// leaves every connection of the group to the kernel's hash, so that it gets its
    /// share too (steering around stalls is off meanwhile; the error says so).
    pub fn claim(self: &Arc<Self>, sock: BorrowedFd<'_>, inode: u64, backlog: i32) -> Result<SlotClaim, Unlisted> {
        let t = &self.table;
        let free = |i: usize| {
            t.flags(i).load(Ordering::Relaxed) == 0
                && t.flags(i).compare_exchange(0, FLAG_CLAIMED, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        };
        // A slot whose owner died without freeing it (killed) is free too: the master's
        // watch frees those, but a server may not run one.
        let orphaned = |i: usize| {
            let f = t.flags(i).load(Ordering::Acquire);
            let pid = t.pid(i).load(Ordering::Relaxed);
            f != 0
                && pid != 0 // 0: being claimed right now
                && !procfs::alive(pid)
                && t.replace_flags(i, f, FLAG_CLAIMED)
        };
        let cap = t.capacity();
        let Some(slot) = (0..cap).find(|&i| free(i)).or_else(|| (0..t.high()).find(|&i| orphaned(i))) else {
            return Err(Unlisted::record(self));
        };
        t.raise_high(slot);
        t.beats(slot).store(0, Ordering::Relaxed);
        t.queue(slot).store(0, Ordering::Relaxed);
        t.load(slot).store(0, Ordering::Relaxed);
        t.seen(slot).store(t.arrivals(slot).load(Ordering::Relaxed), Ordering::Relaxed);
        t.unseen_at(slot).store(0, Ordering::Relaxed);
        t.pid(slot).store(std::process::id(), Ordering::Relaxed);
        t.fd(slot).store(sock.as_raw_fd(), Ordering::Relaxed);
        t.inode(slot).store(inode, Ordering::Relaxed);
        t.backlog(slot).store(backlog, Ordering::Relaxed);
        t.claimed_in(slot).store(t.generation().load(Ordering::Acquire), Ordering::Release);
        if let Err(e) = bpf::sockarray_set(self.sockarray(), slot as u32, sock) {
            t.pid(slot).store(0, Ordering::Relaxed);
            t.replace_flags(slot, FLAG_CLAIMED, 0);
            let mut u = Unlisted::record(self);
            u.why = format!("cannot put the socket into the steering map (bpf map update): {e}; {}", u.why);
            return Err(u);
        }
        // In a group whose workers beat, a new worker is chosen from its first heartbeat on:
        // before that its event loop is not running (a reload's new worker still starting),
        // and what the program sent it would wait. Its siblings count it as coming.
        let warming = t.beating().load(Ordering::Acquire) != 0;
        t.set_flags(slot, FLAG_MEMBER | if warming { FLAG_WARMING } else { 0 });
        Ok(SlotClaim {
            steering: Arc::clone(self),
            slot,
            owner: std::process::id(),
            beaten: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Every claimed slot, in slot order.
    pub fn status(&self) -> Vec<SlotStatus> {
        let t = &self.table;
        (0..t.high())
            .filter_map(|i| {
                let flags = t.flags(i).load(Ordering::Acquire);
                (flags & FLAG_CLAIMED != 0).then(|| SlotStatus {
                    slot: i,
                    pid: t.pid(i).load(Ordering::Relaxed),
                    state: state_of(flags),
                    beats: t.beats(i).load(Ordering::Relaxed),
                    queue: t.queue(i).load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// One tick of the watch over this group's slots alone; returns when to call again.
    #[cfg(test)]
    pub(crate) fn watch(self: &Arc<Self>, threshold: Duration) -> Duration {
        watch_groups(std::iter::once(self), threshold).expect("one group")
    }

    fn group(&self) -> Group<'_> {
        Group { addr: self.addr, table: &self.table, sockarray: self.sockarray() }
    }
}

/// A slot this process holds; dropping it (after the socket is closed) frees the slot.
#[derive(Debug)]
pub struct SlotClaim {
    pub steering: Arc<Steering>,
    pub slot: usize,
    owner: u32,
    /// Its owner has beaten since the claim (so the slot is no longer warming).
    beaten: std::sync::atomic::AtomicBool,
}

impl SlotClaim {
    /// A heartbeat: the owner's loop runs, and has seen what was sent to it so far (the
    /// program counts what arrives after this as the slot's load).
    pub fn beat(&self) {
        let t = self.steering.table();
        t.beats(self.slot).fetch_add(1, Ordering::Relaxed);
        let arrivals = t.arrivals(self.slot);
        let seen = arrivals.load(Ordering::Relaxed);
        if t.seen(self.slot).load(Ordering::Relaxed) != seen {
            // A full barrier (xchg): a connection the program counts after this store
            // finds `seen` equal to what it counted before and stamps its arrival; one it
            // counted before the store (after the load above) is seen by the load below,
            // and stamped here. Either way the watch times it from its arrival.
            t.seen(self.slot).swap(seen, Ordering::SeqCst);
            if arrivals.load(Ordering::SeqCst) != seen {
                t.unseen_at(self.slot).store(procfs::kernel_monotonic_coarse_ns(), Ordering::Relaxed);
            }
        }
        if !self.beaten.load(Ordering::Relaxed) {
            self.first_beat();
        }
    }

    /// The owner's loop runs: the slot may be chosen, and the group's later workers warm up.
    #[cold]
    fn first_beat(&self) {
        self.beaten.store(true, Ordering::Relaxed);
        let t = self.steering.table();
        if t.beating().load(Ordering::Relaxed) == 0 {
            t.beating().store(1, Ordering::Release);
        }
        if t.flags(self.slot).load(Ordering::Acquire) & FLAG_WARMING != 0 {
            t.clear_flags(self.slot, FLAG_WARMING);
        }
    }

    /// The owner's load figure (its open connections), which the program compares.
    pub fn set_load(&self, load: u32) {
        store_if_changed(self.steering.table().load(self.slot), load);
    }

    /// Takes the slot out of the program's choice; its socket stays open.
    pub fn mark_retiring(&self) {
        self.steering.table().set_flags(self.slot, FLAG_RETIRING);
    }
}

/// Writes `v` only when it differs: the program reads these words for every connection,
/// and a store, even of the same value, takes the cache line away from the CPUs that
/// run it (measured: an unconditional store per heartbeat more than doubled the
/// program's cost with 256 workers).
fn store_if_changed(word: &std::sync::atomic::AtomicU32, v: u32) {
    if word.load(Ordering::Relaxed) != v {
        word.store(v, Ordering::Relaxed);
    }
}

impl Drop for SlotClaim {
    fn drop(&mut self) {
        // A process forked from the owner drops a copy, not the claim.
        if std::process::id() == self.owner {
            let t = self.steering.table();
            t.pid(self.slot).store(0, Ordering::Relaxed);
            let f = t.flags(self.slot).load(Ordering::Acquire);
            t.replace_flags(self.slot, f, 0);
        }
    }
}

/// A worker the table could not hold: while it lives, the program leaves every connection
/// to the kernel's hash (see Steering::claim()). Dropping it ends that.
#[derive(Debug)]
pub struct Unlisted {
    steering: Arc<Steering>,
    /// Its entry in the table's overflow list (the watch forgets a dead process's).
    entry: Option<usize>,
    owner: u32,
    /// What to log.
    pub why: String,
}

impl Unlisted {
    fn record(s: &Arc<Steering>) -> Unlisted {
        let t = s.table();
        let me = std::process::id();
        let entry =
            (0..OVERFLOW).find(|&k| t.overflow(k).compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed).is_ok());
        t.unlisted().fetch_add(1, Ordering::SeqCst);
        let why = format!(
            "all {} steering slots are taken; this worker's group spreads new connections by the kernel's hash (no steering around stalled workers) while it runs; give the server a higher worker count (reuseport_set_set_max_workers)",
            t.capacity()
        );
        Unlisted { steering: Arc::clone(s), entry, owner: me, why }
    }
}

impl Drop for Unlisted {
    fn drop(&mut self) {
        if std::process::id() != self.owner {
            return;
        }
        let t = self.steering.table();
        // Without an entry nobody else can forget it: take it off here only.
        let mine = self
            .entry
            .is_none_or(|k| t.overflow(k).compare_exchange(self.owner, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok());
        if mine {
            t.unlisted().fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Why a steering context could not be created: the errno and the step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateError {
    pub errno: i32,
    pub step: &'static str,
}

impl std::fmt::Display for CreateError {
    /// The step, the error, and what the operator can do about it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, crate::error::strerror(self.errno))?;
        match bpf_creation_hint(self.errno) {
            Some(hint) => write!(f, " ({hint})"),
            None => Ok(()),
        }
    }
}

/// What the operator can do when bpf() cannot create a map or load a program any more
/// (`errno` of BPF_MAP_CREATE or BPF_PROG_LOAD).
pub(crate) fn bpf_creation_hint(errno: i32) -> Option<&'static str> {
    match errno {
        libc::EPERM | libc::EACCES => Some(
            "this process lacks CAP_BPF (and CAP_SYS_ADMIN), or a seccomp filter denies bpf(): creating BPF maps and programs needs them, attaching those already held does not; restart the master with CAP_BPF to get it back",
        ),
        libc::ENOMEM => Some(
            "BPF maps and programs are charged to the process's memory cgroup (Linux 5.11 and later; RLIMIT_MEMLOCK before): raise the cgroup's memory limit",
        ),
        libc::EMFILE | libc::ENFILE => Some("out of file descriptors: raise RLIMIT_NOFILE"),
        _ => None,
    }
}

/// A new steering context for the group of `addr`, with `cap` slots: maps created and
/// program loaded. EPERM without CAP_BPF; the error names the step.
pub fn new_group(addr: SocketAddr, cap: usize) -> Result<Arc<Steering>, CreateError> {
    let s = Steering::create(addr, cap)?;
    log::emit(Level::Debug, &format!("{addr}: steering program loaded ({cap} slots)"));
    Ok(Arc::new(s))
}

/// Whether this process can create a steering context (maps and program): Ok, or the
/// errno (EPERM without CAP_BPF). Creates one and frees it at once.
pub fn can_steer() -> Result<(), i32> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Steering::create(any, slots::MIN_CAPACITY).map(drop).map_err(|e| e.errno)
}

/// Whether this process may take a duplicate of its workers' sockets (the rescue):
/// CAP_SYS_PTRACE in its effective set.
pub fn can_rescue() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    procfs::has_capability(CAP_SYS_PTRACE)
}

/// One tick over every group of a set: one sock_diag query per address family, for the
/// ports of the groups whose tick needs the queues (watch.rs says when). Returns when to
/// call again (the soonest any group wants), or None when no group is steered.
pub(crate) fn watch_groups<'a>(
    groups: impl Iterator<Item = &'a Arc<Steering>>,
    threshold: Duration,
) -> Option<Duration> {
    let groups = distinct(groups);
    if groups.is_empty() {
        return None;
    }
    let mut states: Vec<_> = groups.iter().map(|s| s.watch.lock().unwrap_or_else(|p| p.into_inner())).collect();
    let wants: Vec<bool> = groups.iter().zip(states.iter_mut()).map(|(s, st)| st.plan(&s.group(), threshold)).collect();
    let by_family: Vec<(i32, io::Result<HashMap<u64, diag::Listener>>)> = [libc::AF_INET, libc::AF_INET6]
        .into_iter()
        .filter_map(|family| {
            let mut ports: Vec<u16> = groups
                .iter()
                .zip(&wants)
                .filter(|(s, want)| **want && s.family() == family)
                .map(|(s, _)| s.addr.port())
                .collect();
            ports.sort_unstable();
            ports.dedup();
            (!ports.is_empty()).then(|| (family, diag::tcp_listeners(&[family], &ports)))
        })
        .collect();
    let mut next = watch::IDLE_TICK;
    for ((s, st), want) in groups.iter().zip(states.iter_mut()).zip(wants) {
        let listeners = want.then(|| &by_family.iter().find(|(f, _)| *f == s.family()).expect("queried").1);
        st.tick(&s.group(), threshold, listeners);
        next = next.min(st.next_tick(threshold));
    }
    // Whole milliseconds, rounded up: a server's timer (and the C call's int) counts in
    // them, and a tick that came before a verdict's moment would only be followed by
    // another.
    Some(Duration::from_millis(next.as_nanos().div_ceil(1_000_000) as u64))
}

/// The distinct steering contexts among a set's listeners (several addresses of one
/// group are not judged twice).
fn distinct<'a>(all: impl Iterator<Item = &'a Arc<Steering>>) -> Vec<&'a Arc<Steering>> {
    let mut out: Vec<&Arc<Steering>> = Vec::new();
    for s in all {
        if !out.iter().any(|o| Arc::ptr_eq(o, s)) {
            out.push(s);
        }
    }
    out
}
