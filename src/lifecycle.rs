//! Roles and transitions of a set of listeners through a prefork server's life.
//!
//! ```text
//!            open                     release
//!   Empty ───────────▶ MasterOpen ───────────────▶ Released ──open (reload, revert)──▶ MasterOpen
//!     │                   │ (child after fork)         │ (child after fork)
//!     │ open_single       └─ adopt ─▶ Adopted          └─ bind ─▶ Bound
//!     ▼
//!   Single
//! ```
//!
//! Every transition is all-or-nothing: when one listener fails, the sockets this call
//! created are closed and the set is left as it was.

use std::ffi::CStr;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use std::sync::Arc;
use std::time::Duration;

use crate::close_token::CloseToken;
use crate::error::{Error, Result, Step};
use crate::held::HeldSocket;
use crate::log::{self, Level};
use crate::resolve;
use crate::retire;
use crate::socket;
use crate::spec::{self, ListenSpec, Options};
use crate::steer::{self, SlotClaim, Steering};
use crate::strategy::{self, Applied, Strategy};
use crate::{bpf, probe};

/// Where a set stands in the lifecycle; also tells which process is holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Specs only, no sockets yet.
    Empty,
    /// The master holds unconfigured sockets.
    MasterOpen,
    /// The master closed its sockets after forking the first worker; specs and ports kept.
    Released,
    /// The first worker took over the master's sockets and configured them.
    Adopted,
    /// A worker bound and configured its own sockets.
    Bound,
    /// One process opened and configured (no master).
    Single,
}

impl Role {
    pub const ALL: [Role; 6] =
        [Role::Empty, Role::MasterOpen, Role::Released, Role::Adopted, Role::Bound, Role::Single];

    /// A static, NUL-terminated name for logs ("master-open", "adopted"...).
    pub fn name(self) -> &'static CStr {
        match self {
            Role::Empty => c"empty",
            Role::MasterOpen => c"master-open",
            Role::Released => c"released",
            Role::Adopted => c"adopted",
            Role::Bound => c"bound",
            Role::Single => c"single",
        }
    }

    pub fn as_str(self) -> &'static str {
        self.name().to_str().expect("ASCII names")
    }
}

#[derive(Debug)]
pub struct Listener {
    /// The address to bind. After the first open its port is the one the kernel chose for
    /// port 0, so every later socket joins the same group.
    pub addr: SocketAddr,
    pub options: Options,
    pub fd: Option<HeldSocket>,
    /// How this listener's group keeps a leaving socket's queue; set when it is opened.
    pub applied: Option<Applied>,
    /// The group's steering context, when the library's steering program runs it: set by
    /// the master's open and inherited by the workers forked after it.
    pub steering: Option<Arc<Steering>>,
    /// This worker's slot in it (dropped after `fd`, which frees the slot).
    pub claim: Option<SlotClaim>,
}

impl Listener {
    fn new(addr: SocketAddr, options: Options) -> Self {
        Listener { addr, options, fd: None, applied: None, steering: None, claim: None }
    }

    pub fn spec_text(&self) -> String {
        spec::canonical(&self.addr, &self.options)
    }
}

#[derive(Debug)]
pub struct Set {
    listeners: Vec<Listener>,
    role: Role,
    /// The process that opened the sockets now held; adopting them there would mean the
    /// caller forgot to fork.
    opener_pid: Option<u32>,
    strategy: Strategy,
    /// The migration program, loaded once per set (or handed over by the caller) and
    /// inherited by the workers forked from it, who attach it when they bind.
    program: Option<OwnedFd>,
    /// Why the program could not be loaded (errno), so each listener does not try again.
    program_error: Option<i32>,
    pub(crate) drain: retire::DrainTiming,
    pub(crate) draining: Option<retire::Draining>,
    /// Shared with the workers forked from this set: they close their sockets in turn.
    pub(crate) close_token: Option<CloseToken>,
    /// How long connections may wait on a worker whose heartbeat stands still before the
    /// watch steers around it; zero turns steering off (health.rs).
    pub(crate) health_threshold: Duration,
}

impl Default for Set {
    fn default() -> Self {
        Set::new()
    }
}

impl Set {
    pub fn new() -> Self {
        Set {
            listeners: Vec::new(),
            role: Role::Empty,
            opener_pid: None,
            strategy: Strategy::Auto,
            program: None,
            program_error: None,
            drain: retire::DrainTiming::default(),
            draining: None,
            close_token: None,
            health_threshold: crate::health::DEFAULT_THRESHOLD,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

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
        if self.role != Role::Empty && self.role != Role::Released {
            return Err(Error::lifecycle(
                libc::EALREADY,
                format!(
                    "{addr}: add: the set already holds sockets ({}); add specs before opening, or after release",
                    self.role.as_str()
                ),
            ));
        }
        if addr.port() != 0 && self.listeners.iter().any(|l| l.addr == *addr) {
            return Err(Error::invalid(format!("{addr}: add: this address is already in the set")));
        }
        Ok(())
    }

    /// Master: socket + SO_REUSEPORT + bind + listen for every spec, nothing else.
    /// Also the reload path (open again after release) and the way an old master reverting
    /// an upgrade gets sockets back.
    pub fn master_open(&mut self) -> Result<()> {
        match self.role {
            Role::Empty | Role::Released => {}
            r => return Err(already_open("open", r)),
        }
        self.require_listeners("open")?;
        self.open_all(false)?;
        for s in self.listeners.iter().filter_map(|l| l.steering.as_ref()) {
            s.note_open();
        }
        let migrates = self.listeners.iter().any(|l| l.applied.as_ref().is_some_and(|a| a.strategy.migrates()));
        if migrates && self.close_token.is_none() {
            // Without it the workers' sockets still leave their groups, only not in turn.
            match CloseToken::new() {
                Ok(t) => self.close_token = Some(t),
                Err(e) => log::emit(Level::Warn, &format!("cannot create the close token (pipe2: {e}); workers will close their sockets without taking turns")),
            }
        }
        self.role = Role::MasterOpen;
        self.opener_pid = Some(std::process::id());
        Ok(())
    }

    /// Master, right after forking the first worker: close every listen socket this process
    /// holds, keep the specs and resolved ports for the next open.
    pub fn release(&mut self) -> Result<()> {
        if self.role == Role::Released {
            return Err(Error::lifecycle(libc::EALREADY, "the set is already released (release called twice)"));
        }
        if self.role == Role::Empty {
            return Err(Error::lifecycle(
                libc::EINVAL,
                "the set holds no sockets to release (call reuseport_master_open first)",
            ));
        }
        let n = self.close_all();
        log::emit(Level::Info, &format!("released {n} listen socket(s) ({} -> released)", self.role.as_str()));
        self.role = Role::Released;
        self.opener_pid = None;
        Ok(())
    }

    /// First worker, after fork: take over the master's sockets (same open file
    /// descriptions, no new sockets) and configure them.
    pub fn adopt(&mut self) -> Result<()> {
        match self.role {
            Role::MasterOpen => {}
            Role::Empty | Role::Released => {
                return Err(Error::lifecycle(
                    libc::EINVAL,
                    format!("the set holds no inherited sockets ({}): the master must call reuseport_master_open before forking the first worker; other workers call reuseport_worker_bind", self.role.as_str()),
                ))
            }
            r => return Err(already_open("adopt", r)),
        }
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
            self.close_all();
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
        self.role = Role::Adopted;
        self.opener_pid = None;
        Ok(())
    }

    /// Every other worker: its own SO_REUSEPORT socket for every spec, configured. Must run
    /// before the worker drops privileges.
    pub fn worker_bind(&mut self) -> Result<()> {
        match self.role {
            Role::Empty | Role::Released => {}
            r => {
                return Err(Error::lifecycle(
                    libc::EALREADY,
                    format!("the set already holds sockets ({}); a worker binds in a set the master released (fork after reuseport_master_release); a worker that inherited sockets calls reuseport_master_release first to close its copies", r.as_str()),
                ))
            }
        }
        self.require_listeners("bind")?;
        if let Some(l) = self.listeners.iter().find(|l| l.addr.port() == 0) {
            return Err(Error::lifecycle(
                libc::EINVAL,
                format!("{}: port 0 is not resolved yet; the master's reuseport_master_open chooses the port that workers then join", l.addr),
            ));
        }
        self.open_all(true)?;
        self.claim_slots();
        self.role = Role::Bound;
        Ok(())
    }

    /// No master: open and configure in one call.
    pub fn open_single(&mut self) -> Result<()> {
        match self.role {
            Role::Empty | Role::Released => {}
            r => return Err(already_open("open", r)),
        }
        self.require_listeners("open")?;
        self.open_all_single()?;
        self.role = Role::Single;
        self.opener_pid = None;
        Ok(())
    }

    /// Closes every socket this process holds (used by free and by release).
    fn close_all(&mut self) -> usize {
        let mut n = 0;
        for l in &mut self.listeners {
            if l.fd.take().is_some() {
                n += 1;
            }
            l.claim = None;
        }
        n
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

    /// Opens (and optionally configures) a socket for every listener and gives its group
    /// the set's strategy; on failure closes those it opened and changes nothing.
    fn open_all(&mut self, configure: bool) -> Result<()> {
        self.open_all_as(configure, false)
    }

    /// open_all() for a process without a master (`nginx -t`, a single-process server),
    /// which may join a group that servers run: it leaves their program in place (see
    /// apply_strategy()).
    fn open_all_single(&mut self) -> Result<()> {
        self.open_all_as(true, true)
    }

    fn open_all_as(&mut self, configure: bool, single: bool) -> Result<()> {
        let mut opened: Vec<(OwnedFd, SocketAddr, Applied, Option<Arc<Steering>>)> =
            Vec::with_capacity(self.listeners.len());
        for i in 0..self.listeners.len() {
            let (addr, options) = (self.listeners[i].addr, self.listeners[i].options);
            let fd = socket::open(&addr, &options)?;
            if configure {
                socket::configure(fd.as_fd(), &addr, &options)?;
            }
            let bound = socket::local_addr(fd.as_fd())
                .map_err(|e| Error::sys(&e, Step::Bind, &addr.to_string(), "getsockname"))?;
            let steering = self.steering_for(i, &bound, configure);
            let joins_running = single
                && crate::held::socket_inode(fd.as_raw_fd())
                    .is_some_and(|ino| crate::diag::others_on_port(&bound, ino));
            let applied = if joins_running {
                self.join_running_group(&bound)?
            } else {
                self.apply_strategy(fd.as_fd(), &bound, steering.as_ref())?
            };
            opened.push((fd, bound, applied, steering));
        }
        // `opened` drops (and closes) everything on the early returns above.
        for (l, (fd, bound, applied, steering)) in self.listeners.iter_mut().zip(opened) {
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
            if !applied.strategy.migrates() && self.strategy == Strategy::Auto {
                log::emit(Level::Warn, &format!("{bound}: {}", applied.reason));
            }
            l.fd = Some(held);
            l.applied = Some(applied);
            l.steering = steering;
        }
        Ok(())
    }

    /// The steering context for listener `i`: the one inherited from the master (a
    /// worker), or the master's own for this address, created on its first open. None
    /// when steering is off, the strategy is not the library's program, or the program
    /// cannot be loaded here (then the plain migration program is tried).
    fn steering_for(&mut self, i: usize, bound: &SocketAddr, configure: bool) -> Option<Arc<Steering>> {
        if let Some(s) = &self.listeners[i].steering {
            return Some(Arc::clone(s));
        }
        let wants = matches!(self.strategy, Strategy::Auto | Strategy::Bpf)
            && !self.health_threshold.is_zero()
            && self.program.is_none()
            && !configure; // only a master's open creates one: a single process has no siblings
        if !wants {
            return None;
        }
        match steer::for_group(*bound) {
            Ok(s) => Some(s),
            Err(errno) => {
                log::emit(
                    Level::Debug,
                    &format!(
                        "{bound}: no steering: {} (the plain migration program is tried)",
                        crate::error::strerror(errno)
                    ),
                );
                None
            }
        }
    }

    /// A worker's sockets join the steering: each takes a slot in its group's table.
    fn claim_slots(&mut self) {
        for l in &mut self.listeners {
            let (Some(s), Some(held)) = (&l.steering, &l.fd) else { continue };
            match s.claim(held.borrow(), held.inode(), l.options.backlog) {
                Ok(c) => l.claim = Some(c),
                Err(why) => log::emit(
                    Level::Warn,
                    &format!(
                        "{}: {why}; this worker's socket gets connections only when no sibling is eligible",
                        l.addr
                    ),
                ),
            }
        }
    }

    /// Gives the group of `sock` the set's strategy: attaches the migration program when
    /// asked for or automatic, or checks the sysctl.
    fn apply_strategy(
        &mut self,
        sock: BorrowedFd<'_>,
        addr: &SocketAddr,
        steering: Option<&Arc<Steering>>,
    ) -> Result<Applied> {
        let wants_bpf = matches!(self.strategy, Strategy::Auto | Strategy::Bpf);
        let bpf_result = match steering {
            // The steering program migrates too (same attach type).
            Some(s) => bpf::attach(sock, s.program()).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
            None if wants_bpf => self.attach_program(sock),
            None => Err(libc::ENOENT),
        };
        strategy::resolve(self.strategy, bpf_result, probe::tcp_migrate_req())
            .map_err(|(errno, why)| Error::new(errno, Step::Bpf, format!("{addr}: strategy {}: {why}", self.strategy)))
    }

    fn attach_program(&mut self, sock: BorrowedFd<'_>) -> std::result::Result<(), i32> {
        if self.program.is_none() {
            if let Some(errno) = self.program_error {
                return Err(errno);
            }
            match bpf::load_migrate_program() {
                Ok(fd) => self.program = Some(fd),
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    self.program_error = Some(errno);
                    return Err(errno);
                }
            }
        }
        let prog = self.program.as_ref().expect("loaded above");
        bpf::attach(sock, prog.as_fd()).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }

    /// A single process joining a group that other processes run (`nginx -t` beside the
    /// running server): attaching a program would replace theirs for the whole group (a
    /// steering program would give way to one that steers nothing), so it attaches none.
    /// The group's program, if any, then also governs this socket: a steering program
    /// never selects it (it has no slot), and migrates what it holds when it closes.
    fn join_running_group(&mut self, addr: &SocketAddr) -> Result<Applied> {
        let wants_bpf = matches!(self.strategy, Strategy::Auto | Strategy::Bpf);
        let mut applied = strategy::resolve(
            self.strategy,
            if wants_bpf { Ok(()) } else { Err(libc::ENOENT) },
            probe::tcp_migrate_req(),
        )
        .map_err(|(errno, why)| Error::new(errno, Step::Bpf, format!("{addr}: strategy {}: {why}", self.strategy)))?;
        if wants_bpf {
            applied.reason = "joined a group that other processes run: its program stays in place".to_string();
        }
        Ok(applied)
    }

    /// Chooses how this set's groups keep a leaving socket's queue. Before opening.
    pub fn set_strategy(&mut self, strategy: Strategy) -> Result<()> {
        self.require_no_sockets("set the strategy")?;
        self.strategy = strategy;
        Ok(())
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Uses a migration program the caller holds (inherited across fork or exec from a
    /// privileged master) instead of loading one: what lets an unprivileged master migrate.
    pub fn use_program(&mut self, fd: RawFd) -> Result<()> {
        self.require_no_sockets("set the program")?;
        let prog = bpf::adopt_program(fd).map_err(|why| Error::new(libc::EINVAL, Step::Bpf, why))?;
        self.program = Some(prog);
        self.program_error = None;
        Ok(())
    }

    /// The migration program this set holds, if any (borrowed).
    pub fn program_fd(&self) -> Option<RawFd> {
        self.program.as_ref().map(|p| p.as_raw_fd())
    }

    fn require_no_sockets(&self, what: &str) -> Result<()> {
        match self.role {
            Role::Empty | Role::Released => Ok(()),
            r => Err(Error::lifecycle(
                libc::EALREADY,
                format!("cannot {what}: the set already holds sockets ({})", r.as_str()),
            )),
        }
    }

    /// Closes every socket this process holds and marks the set released: the end of a
    /// retire.
    pub(crate) fn close_for_retire(&mut self) -> usize {
        let n = self.close_all();
        self.role = Role::Released;
        self.opener_pid = None;
        self.draining = None;
        n
    }

    pub(crate) fn listeners_mut(&mut self) -> &mut [Listener] {
        &mut self.listeners
    }

    /// The fd of listener `i`, if this process holds it.
    pub fn fd(&self, i: usize) -> Option<RawFd> {
        self.listeners.get(i)?.fd.as_ref().map(HeldSocket::raw)
    }
}

fn already_open(what: &str, r: Role) -> Error {
    Error::lifecycle(
        libc::EALREADY,
        format!("cannot {what}: the set already holds sockets ({}); release it first", r.as_str()),
    )
}
