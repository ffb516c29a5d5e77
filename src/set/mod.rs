//! The set: a server's listen specs and the sockets this process holds for them, moved
//! through the lifecycle (role.rs) by the master, the first worker and the other workers.
//!
//! Every transition is all-or-nothing: when one listener fails, the sockets this call
//! created are closed and the set is left as it was. The set's methods all live here;
//! the work they delegate is in the modules below.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result, Step};
use crate::log::{self, Level};
use crate::spec::{self, ListenSpec, Options};
use crate::steering::{self, SlotStatus, Steering};
use crate::strategy::{Applied, Strategy};
use crate::sys::{diag, fd::socket_inode};

mod bind_key;
mod bind_order;
mod close_token;
mod groups;
mod held;
mod listener;
mod portowner;
mod resolve;
mod retire;
mod role;
mod socket;

use groups::Groups;
use held::HeldSocket;
pub use listener::Listener;
use retire::Retirement;
pub use retire::{DrainTiming, Progress};
pub use role::Role;
use role::{transition, Op};

#[derive(Debug)]
pub struct Set {
    listeners: Vec<Listener>,
    role: Role,
    /// The process that opened the sockets now held; adopting them there would mean the
    /// caller forgot to fork.
    opener_pid: Option<u32>,
    groups: Groups,
    retirement: Retirement,
}

impl Default for Set {
    fn default() -> Self {
        Set::new()
    }
}

fn refused(r: role::Refusal) -> Error {
    Error::lifecycle(r.errno, r.message)
}

impl Set {
    pub fn new() -> Self {
        Set {
            listeners: Vec::new(),
            role: Role::Empty,
            opener_pid: None,
            groups: Groups::default(),
            retirement: Retirement::default(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// The listen socket of listener `i`, if this process holds it (borrowed: the set
    /// closes it on release, retire or drop).
    pub fn fd(&self, i: usize) -> Option<BorrowedFd<'_>> {
        self.listeners.get(i)?.fd.as_ref().map(HeldSocket::borrow)
    }

    // ---- specs -------------------------------------------------------------------------

    /// Adds a listen spec in nginx syntax. Returns how many listeners it added (a host name
    /// may resolve to several addresses).
    pub fn add_spec(&mut self, text: &str) -> Result<usize> {
        let spec = spec::parse(text)?;
        self.add_parsed(&spec, text)
    }

    fn add_parsed(&mut self, spec: &ListenSpec, text: &str) -> Result<usize> {
        let addrs = resolve::addresses(spec)?;
        for a in &addrs {
            spec.options
                .validate(a.is_ipv6())
                .map_err(|e| Error::invalid(format!("invalid listen spec \"{text}\": {a}: {}", e.message)))?;
        }
        // Check every address before adding any, so a failed call adds nothing.
        for a in &addrs {
            self.check_addable(a)?;
        }
        for a in &addrs {
            self.listeners.push(Listener::new(*a, spec.options));
        }
        Ok(addrs.len())
    }

    /// Adds a listener from an address and options built by the caller (the C struct form).
    pub fn add_addr(&mut self, addr: SocketAddr, options: Options) -> Result<()> {
        options.validate(addr.is_ipv6()).map_err(|e| Error::invalid(format!("{addr}: {}", e.message)))?;
        self.check_addable(&addr)?;
        self.listeners.push(Listener::new(addr, options));
        Ok(())
    }

    fn check_addable(&self, addr: &SocketAddr) -> Result<()> {
        transition(self.role, Op::Add).map_err(|r| Error::lifecycle(r.errno, format!("{addr}: add: {}", r.message)))?;
        if addr.port() != 0 && self.listeners.iter().any(|l| l.addr == *addr) {
            return Err(Error::invalid(format!("{addr}: add: this address is already in the set")));
        }
        Ok(())
    }

    fn require_listeners(&self, what: &str) -> Result<()> {
        if self.listeners.is_empty() {
            return Err(Error::lifecycle(
                libc::EINVAL,
                format!("the set has no listen specs to {what} (add some with reuseport_set_add)"),
            ));
        }
        Ok(())
    }

    // ---- master --------------------------------------------------------------------------

    /// Master: socket + SO_REUSEPORT + bind + listen for every spec, nothing else.
    /// Also the reload path (open again after release) and the way an old master reverting
    /// an upgrade gets sockets back.
    pub fn master_open(&mut self) -> Result<()> {
        let next = transition(self.role, Op::Open).map_err(refused)?;
        self.require_listeners("open")?;
        self.open_all(false, false)?;
        for s in self.listeners.iter().filter_map(|l| l.steering.as_ref()) {
            s.note_open();
        }
        if self.listeners.iter().any(|l| l.applied.as_ref().is_some_and(|a| a.strategy.migrates())) {
            self.retirement.ensure_close_token();
        }
        self.role = next;
        self.opener_pid = Some(std::process::id());
        Ok(())
    }

    /// Master, right after forking the first worker: close every listen socket this process
    /// holds, keep the specs and resolved ports for the next open.
    pub fn release(&mut self) -> Result<()> {
        let next = transition(self.role, Op::Release).map_err(refused)?;
        let n = retire::close_all(&mut self.listeners);
        log::emit(Level::Info, &format!("released {n} listen socket(s) ({} -> released)", self.role.as_str()));
        self.role = next;
        self.opener_pid = None;
        Ok(())
    }

    /// The master takes its groups' steering back: after the new binary of an upgrade
    /// exited (a revert), its program, with slots of workers that are gone, would stay in
    /// the groups, and the kernel's hash would spread over the old workers unsteered. A
    /// program is attached through a member socket, and the master holds none, so it
    /// joins each group for an instant with a fresh socket, attaches its program, and
    /// closes it (what the kernel queued on it meanwhile migrates, through the program).
    /// Returns how many groups it reclaimed.
    pub fn reclaim_steering(&self) -> Result<usize> {
        bind_key::bind_keys(self.listeners.iter().map(|l| l.addr));
        let mut n = 0;
        for l in &self.listeners {
            let Some(s) = &l.steering else { continue };
            let sock = socket::open(&l.addr, &l.options)?;
            s.attach(sock.as_fd()).map_err(|e| {
                Error::sys(&e, Step::Bpf, &l.addr.to_string(), "the steering program could not be attached again; new connections spread by the kernel's hash until the next reload")
            })?;
            n += 1;
        }
        if n > 0 {
            log::emit(Level::Info, &format!("took the steering of {n} group(s) back"));
        }
        Ok(n)
    }

    // ---- workers ---------------------------------------------------------------------------

    /// First worker, after fork: take over the master's sockets (same open file
    /// descriptions, no new sockets) and configure them.
    pub fn adopt(&mut self) -> Result<()> {
        let next = transition(self.role, Op::Adopt).map_err(refused)?;
        if self.opener_pid == Some(std::process::id()) {
            return Err(Error::lifecycle(
                libc::EINVAL,
                "called in the master that opened the sockets; call it in the first worker, after fork (the master calls reuseport_master_release)",
            ));
        }
        let verified = self.listeners.iter().try_for_each(|l| {
            let held = l.fd.as_ref().expect("MasterOpen holds every fd");
            socket::verify_listener(held, &l.addr)
        });
        if let Err(e) = verified {
            // The inherited sockets cannot be trusted as a whole: let go of them (closing
            // only those still intact) so this worker can bind its own instead.
            retire::close_all(&mut self.listeners);
            self.role = Role::Released;
            self.opener_pid = None;
            return Err(Error::new(
                e.errno,
                e.step,
                format!(
                    "{}; the set is now released: this worker may bind its own sockets with reuseport_worker_bind",
                    e.message
                ),
            ));
        }
        // Configure may fail half-way (e.g. an option the kernel refuses); the sockets stay
        // this process's either way, so the role changes only on success and the caller
        // can free the set to close them.
        for l in &self.listeners {
            let held = l.fd.as_ref().expect("MasterOpen holds every fd");
            socket::configure(held.borrow(), &l.addr, &l.options)?;
            log::emit(Level::Debug, &format!("adopted {} (fd {})", l.spec_text(), held.raw()));
        }
        self.claim_slots();
        self.role = next;
        self.opener_pid = None;
        Ok(())
    }

    /// Every other worker: its own SO_REUSEPORT socket for every spec, configured. Must run
    /// before the worker drops privileges.
    pub fn worker_bind(&mut self) -> Result<()> {
        let next = transition(self.role, Op::Bind).map_err(refused)?;
        self.require_listeners("bind")?;
        if let Some(l) = self.listeners.iter().find(|l| l.addr.port() == 0) {
            return Err(Error::lifecycle(
                libc::EINVAL,
                format!("{}: port 0 is not resolved yet; the master's reuseport_master_open chooses the port that workers then join", l.addr),
            ));
        }
        self.open_all(true, false)?;
        self.claim_slots();
        self.role = next;
        Ok(())
    }

    /// No master: open and configure in one call.
    pub fn open_single(&mut self) -> Result<()> {
        let next = transition(self.role, Op::OpenSingle).map_err(refused)?;
        self.require_listeners("open")?;
        self.open_all(true, true)?;
        self.role = next;
        self.opener_pid = None;
        Ok(())
    }

    /// Opens (and optionally configures) a socket for every listener and gives its group
    /// the set's strategy; on failure closes those it opened and changes nothing. A
    /// `single` process (`nginx -t`, a server without a master) may join a group that
    /// servers run: it leaves their program in place (Groups::join_running()). On each
    /// port it binds first the address a process of this server bound last, after a
    /// wildcard key, to stay on the kernel's fast path for reuseport binds (bind_key.rs,
    /// bind_order.rs).
    fn open_all(&mut self, configure: bool, single: bool) -> Result<()> {
        // Per listener, in the set's order, whatever the order of the binds.
        type Opened = (OwnedFd, SocketAddr, Applied, Option<Arc<Steering>>);
        let mut opened: Vec<Option<Opened>> = (0..self.listeners.len()).map(|_| None).collect();
        let last_bind: Vec<(u16, u64)> = self
            .listeners
            .iter()
            .map(|l| (l.addr.port(), l.steering.as_ref().map_or(0, |s| s.last_bind_ns())))
            .collect();
        bind_key::bind_keys(self.listeners.iter().map(|l| l.addr));
        for i in bind_order::bind_order(&last_bind) {
            let l = &self.listeners[i];
            let fd = socket::open(&l.addr, &l.options)?;
            if configure {
                socket::configure(fd.as_fd(), &l.addr, &l.options)?;
            }
            let bound = socket::local_addr(fd.as_fd())
                .map_err(|e| Error::sys(&e, Step::Bind, &l.addr.to_string(), "getsockname"))?;
            let steering = self.groups.steering_for(l.steering.as_ref(), &bound, configure);
            if let Some(s) = &steering {
                s.note_bind();
            }
            let joins_running =
                single && socket_inode(fd.as_raw_fd()).is_some_and(|ino| diag::others_on_port(&bound, ino));
            let applied = if joins_running {
                self.groups.join_running(&bound)?
            } else {
                self.groups.apply(fd.as_fd(), &bound, steering.as_ref())?
            };
            opened[i] = Some((fd, bound, applied, steering));
        }
        // `opened` drops (and closes) everything on the early returns above.
        for (l, (fd, bound, applied, steering)) in self.listeners.iter_mut().zip(opened.into_iter().flatten()) {
            if l.addr.port() == 0 {
                log::emit(
                    Level::Info,
                    &format!(
                        "{}: the kernel chose port {}; every later socket of this group binds it",
                        l.addr,
                        bound.port()
                    ),
                );
            }
            l.addr = bound;
            let held = HeldSocket::new(fd, bound);
            log::emit(
                Level::Debug,
                &format!(
                    "opened {} (fd {}{}, strategy {})",
                    l.spec_text(),
                    held.raw(),
                    if configure { ", configured" } else { ", unconfigured" },
                    applied.strategy
                ),
            );
            if !applied.strategy.migrates() && self.groups.strategy == Strategy::Auto {
                log::emit(Level::Warn, &format!("{bound}: {}", applied.reason));
            }
            l.fd = Some(held);
            l.applied = Some(applied);
            l.steering = steering;
        }
        Ok(())
    }

    /// A worker's sockets join the steering: each takes a slot in its group's table.
    fn claim_slots(&mut self) {
        for l in &mut self.listeners {
            let (Some(s), Some(held)) = (&l.steering, &l.fd) else { continue };
            match s.claim(held.borrow(), held.inode(), l.options.backlog) {
                Ok(c) => l.claim = Some(c),
                Err(unlisted) => {
                    log::emit(Level::Warn, &format!("{}: {}", l.addr, unlisted.why));
                    l.unlisted = Some(unlisted);
                }
            }
        }
    }

    // ---- retire ----------------------------------------------------------------------------

    /// One step of leaving the groups; never waits (see retire.rs). `hand_over(fd, index)`
    /// receives each connection accepted on the way (a drain's, and what arrives while
    /// the sockets leave the steering's choice): the server serves it; giving it back
    /// (`Some`) refuses it, and it is closed. Without it, nothing is accepted (a drain
    /// needs it). `Again(d)`: call again within `d` (sooner when a listen fd or
    /// retire_poll_fd() is readable). On `Done` the set is released.
    pub fn retire(&mut self, hand_over: Option<&mut dyn FnMut(OwnedFd, usize) -> Option<OwnedFd>>) -> Result<Progress> {
        let next = transition(self.role, Op::Retire).map_err(refused)?;
        let progress = self.retirement.step(&mut self.listeners, hand_over);
        if let Progress::Done { .. } = progress {
            self.role = next;
            self.opener_pid = None;
            self.retirement.reset();
        }
        Ok(progress)
    }

    /// While a retire waits for its turn to close: the fd that becomes readable when the
    /// turn may be free (poll it, then call retire() again). None otherwise.
    pub fn retire_poll_fd(&self) -> Option<RawFd> {
        self.retirement.poll_fd()
    }

    /// Whether a retire would accept connections to hand over (some held listener drains).
    pub fn retire_hands_over(&self) -> bool {
        retire::hands_over(&self.listeners)
    }

    /// Sets the drain's timing (before or during the life of the set).
    pub fn set_drain(&mut self, timing: DrainTiming) -> Result<()> {
        self.retirement.set_drain(timing)
    }

    // ---- steering and health ---------------------------------------------------------------

    /// A worker's sign of life, once per event-loop iteration: an atomic add per steered
    /// listener, no system call.
    pub fn heartbeat(&self) {
        for c in self.listeners.iter().filter_map(|l| l.claim.as_ref()) {
            c.beat();
        }
    }

    /// A worker's heartbeat with its load figure (open connections): the program prefers
    /// the least loaded of the four eligible workers it compares.
    pub fn heartbeat_load(&self, load: u32) {
        for c in self.listeners.iter().filter_map(|l| l.claim.as_ref()) {
            c.beat();
            c.set_load(load);
        }
    }

    /// How many workers per generation the server runs at most: the slot table a master
    /// creates for each group holds two generations of them. Before the master's first
    /// open (a reload shares the table made then).
    pub fn set_max_workers(&mut self, n: usize) {
        self.groups.max_workers = n;
    }

    /// Names a listen socket of another binary in one of this set's steered groups (e.g.
    /// stock nginx's, inherited across an upgrade, whose processes keep accepting from it)
    /// as a fallback target: when none of the group's own sockets may take a connection
    /// (its last workers are leaving), the program sends it there rather than leave it to
    /// the kernel's hash, which would also choose the leaving sockets up to their close
    /// and so reset a handshake completing in it. The set keeps no reference: the caller
    /// may close `fd` at once, and the target is gone when the socket closes in every
    /// process. Who: the master, after its open. Ok(true) when added; Ok(false) when the
    /// socket's address is no steered listener's, or the group holds FALLBACK_MAX already.
    pub fn add_fallback(&self, fd: BorrowedFd<'_>) -> Result<bool> {
        let addr = socket::local_addr(fd).map_err(|e| {
            Error::sys(&e, Step::Bpf, &format!("fd {}", fd.as_raw_fd()), "add a fallback: getsockname of the socket")
        })?;
        let Some(steering) = self.listeners.iter().filter(|l| l.addr == addr).find_map(|l| l.steering.as_ref()) else {
            return Ok(false);
        };
        let added = steering.add_fallback(fd).map_err(|e| {
            Error::sys(&e, Step::Bpf, &addr.to_string(), "add a fallback: the socket must be a listening SO_REUSEPORT socket of the same group (same address, same user), in no other socket array")
        })?;
        if added {
            log::emit(
                Level::Info,
                &format!(
                    "{addr}: fd {} is a fallback target when none of this set's sockets may take a connection",
                    fd.as_raw_fd()
                ),
            );
        }
        Ok(added)
    }

    /// The master's tick: judges every worker slot of this set's groups. Returns when to
    /// call again, or None when no listener is steered (nothing to watch).
    pub fn watch(&self) -> Option<Duration> {
        steering::watch_groups(self.listeners.iter().filter_map(|l| l.steering.as_ref()), self.groups.health_threshold)
    }

    /// How long connections may wait on a worker whose heartbeat stands still before it is
    /// steered around; zero turns the health verdicts off (the groups stay steered: leaving
    /// sockets get no new connections).
    pub fn set_health_threshold(&mut self, threshold: Duration) {
        self.groups.health_threshold = threshold;
    }

    /// Whether the groups this set opens next are steered (the default) or get the plain
    /// migration program. The plain program costs the least per connection, but the
    /// kernel's hash then sends handshakes to a leaving socket up to its close, and one
    /// that completes in the microseconds of the close is reset: a few per reload under
    /// heavy load. Steering keeps new connections off a socket from the moment its
    /// worker starts leaving. Before opening; a reload's set decides for itself.
    pub fn set_steering(&mut self, on: bool) -> Result<()> {
        transition(self.role, Op::Configure("switch steering")).map_err(refused)?;
        self.groups.steering = on;
        Ok(())
    }

    /// The threshold set by [`Set::set_health_threshold`] (default 50 ms).
    pub fn health_threshold(&self) -> Duration {
        self.groups.health_threshold
    }

    /// Whether listener `i`'s group is run by the steering program.
    pub fn steered(&self, i: usize) -> Option<bool> {
        self.listeners.get(i).map(|l| l.steering.is_some())
    }

    /// The claimed slots of listener `i`'s group (every generation member this process's
    /// table knows), or None when it is not steered.
    pub fn slots(&self, i: usize) -> Option<Vec<SlotStatus>> {
        self.listeners.get(i)?.steering.as_ref().map(|s| s.status())
    }

    /// The slot this process holds in listener `i`'s group.
    pub fn own_slot(&self, i: usize) -> Option<usize> {
        self.listeners.get(i)?.claim.as_ref().map(|c| c.slot)
    }

    // ---- generations ---------------------------------------------------------------------

    /// A reload's (or a reverting old master's) new set takes over from the set it
    /// replaces: the migration program, the steering context of every address both have
    /// (old and new workers then share one slot table, so a retiring worker sees its
    /// successors coming), and the close token (every generation of one master closes in
    /// turn). Call it after adding the specs, before opening this set; `prev` is not changed and may be freed
    /// afterwards, in any order. A new binary (upgrade) cannot inherit across exec: it is
    /// handed the program fd (use_program()) and creates its own steering.
    pub fn inherit(&mut self, prev: &Set) -> Result<()> {
        transition(self.role, Op::Configure("inherit from the previous set")).map_err(refused)?;
        // The steering is matched by address: without the specs, nothing would match.
        self.require_listeners("match with the previous set's (add the specs before inheriting)")?;
        self.groups.inherit(&prev.groups)?;
        for l in &mut self.listeners {
            if let Some(p) = prev.listeners.iter().find(|p| p.addr == l.addr) {
                l.steering = l.steering.take().or_else(|| p.steering.clone());
            }
        }
        self.retirement
            .inherit_close_token(&prev.retirement)
            .map_err(|e| Error::sys(&e, Step::Lifecycle, "close token", "dup"))?;
        Ok(())
    }

    // ---- strategy ----------------------------------------------------------------------------

    /// Chooses how this set's groups keep a leaving socket's queue. Before opening.
    pub fn set_strategy(&mut self, strategy: Strategy) -> Result<()> {
        transition(self.role, Op::Configure("set the strategy")).map_err(refused)?;
        self.groups.strategy = strategy;
        Ok(())
    }

    /// The strategy asked for (what each listener got: [`Listener::applied`]).
    pub fn strategy(&self) -> Strategy {
        self.groups.strategy
    }

    /// Uses a migration program the caller holds (inherited across fork or exec from a
    /// privileged master) instead of loading one: what lets an unprivileged master migrate.
    /// The set keeps its own close-on-exec duplicate. `EINVAL` when `fd` is not the
    /// library's migration program.
    pub fn use_program(&mut self, fd: BorrowedFd<'_>) -> Result<()> {
        self.use_program_raw(fd.as_raw_fd())
    }

    /// [`Set::use_program`] for an fd number from C, which may be anything.
    pub(crate) fn use_program_raw(&mut self, fd: RawFd) -> Result<()> {
        transition(self.role, Op::Configure("set the program")).map_err(refused)?;
        self.groups.use_program(fd)
    }

    /// The migration program this set holds, if any (borrowed: the set closes it).
    pub fn program_fd(&self) -> Option<BorrowedFd<'_>> {
        self.groups.program_fd()
    }
}
