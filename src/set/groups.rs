//! How a set's reuseport groups keep the connections of a leaving socket: the strategy
//! asked for, the migration program (loaded once per set, or handed over), and the
//! master's steering (with health verdicts while health_threshold is above zero).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result, Step};
use crate::log::{self, Level};
use crate::steering::{self, verdict, Steering};
use crate::strategy::{self, Applied, Strategy};
use crate::sys::{bpf, procfs};

#[derive(Debug)]
pub(crate) struct Groups {
    pub(crate) strategy: Strategy,
    /// The migration program, loaded once per set (or handed over by the caller) and
    /// inherited by the workers forked from it, who attach it when they bind.
    program: Option<OwnedFd>,
    /// Why the program could not be loaded (errno), so each listener does not try again.
    program_error: Option<i32>,
    /// How long connections may wait on a worker whose heartbeat stands still before the
    /// watch steers around it; zero turns those verdicts off, not the steering program,
    /// which still keeps new connections off leaving sockets (steering/watch.rs).
    pub(crate) health_threshold: Duration,
    /// Whether a master's groups get the steering program (with the library's program as
    /// the strategy); off, they get the plain migration program (Set::set_steering()).
    pub(crate) steering: bool,
    /// Workers per generation the server runs at most (0: not said); sizes the slot table
    /// a master creates for each group (steering/slots.rs).
    pub(crate) max_workers: usize,
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            strategy: Strategy::Auto,
            program: None,
            program_error: None,
            health_threshold: verdict::DEFAULT_THRESHOLD,
            steering: true,
            max_workers: 0,
        }
    }
}

impl Groups {
    fn wants_bpf(&self) -> bool {
        matches!(self.strategy, Strategy::Auto | Strategy::Bpf)
    }

    /// The steering context for a listener bound to `bound`: the one it already has
    /// (inherited from the master by a worker, from the previous set by a reload, or from
    /// this set's previous open), or a new one created by a master's open. None with a
    /// strategy other than the library's program, with steering switched off, or when
    /// steering cannot be created here (then the migration program is used: loaded, or the
    /// one handed over). The health threshold does not decide it: at 0 the group is steered
    /// without health verdicts.
    ///
    /// A master that creates a steering context also loads the plain migration program
    /// while it can, and keeps it (handed on to a reload's set and, by the server, across
    /// an upgrade's exec): when it can no longer create BPF objects later in its life (its
    /// CAP_BPF dropped, a seccomp filter, a memory cgroup's limit), an address a reload
    /// adds, or a new binary, still migrates with it, unsteered, instead of losing what a
    /// closing socket holds. A failed creation is a warning naming the step, the cause and
    /// the fix.
    pub(crate) fn steering_for(
        &mut self,
        existing: Option<&Arc<Steering>>,
        bound: &SocketAddr,
        configure: bool,
    ) -> Option<Arc<Steering>> {
        if !self.wants_bpf() || !self.steering {
            return None;
        }
        if let Some(s) = existing {
            return Some(Arc::clone(s));
        }
        if configure {
            return None; // only a master's open creates one: a single process has no siblings
        }
        match steering::new_group(*bound, steering::capacity_for(self.max_workers)) {
            Ok(s) => {
                self.keep_fallback_program(bound);
                Some(s)
            }
            Err(e) => {
                let instead = if self.program.is_some() {
                    "this address gets the plain migration program this master holds: queued connections still migrate, but new connections spread by the kernel's hash, not around stalled workers"
                } else {
                    "this address gets the plain migration program if it can be loaded, else the fallback the strategy allows (the next message says which)"
                };
                log::emit(Level::Warn, &format!("{bound}: no health-aware steering: {e}; {instead}"));
                None
            }
        }
    }

    /// Loads the plain migration program now, while this process can, unless it holds one
    /// (see steering_for()). A failure here is not an error: steering migrates too.
    fn keep_fallback_program(&mut self, bound: &SocketAddr) {
        if self.program.is_some() {
            return;
        }
        match bpf::load_migrate_program() {
            Ok(fd) => self.program = Some(fd),
            Err(e) => log::emit(
                Level::Debug,
                &format!("{bound}: the plain migration program, kept for later addresses, could not be loaded: {e}"),
            ),
        }
    }

    /// Gives the group of `sock` the set's strategy: attaches the steering or migration
    /// program when asked for or automatic, or checks the sysctl.
    pub(crate) fn apply(
        &mut self,
        sock: BorrowedFd<'_>,
        addr: &SocketAddr,
        steering: Option<&Arc<Steering>>,
    ) -> Result<Applied> {
        let bpf_result = match steering {
            // The steering program migrates too (same attach type).
            Some(s) => s.attach(sock).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
            None if self.wants_bpf() => self.attach_program(sock),
            None => Err(libc::ENOENT),
        };
        self.resolve(addr, bpf_result)
    }

    /// A single process joining a group that other processes run (`nginx -t` beside the
    /// running server): attaching a program would replace theirs for the whole group (a
    /// steering program would give way to one that steers nothing), so it attaches none.
    /// The group's program, if any, then also governs this socket: a steering program
    /// never selects it (it has no slot), and migrates what it holds when it closes.
    pub(crate) fn join_running(&self, addr: &SocketAddr) -> Result<Applied> {
        let mut applied = self.resolve(addr, if self.wants_bpf() { Ok(()) } else { Err(libc::ENOENT) })?;
        if self.wants_bpf() {
            applied.reason = "joined a group that other processes run: its program stays in place".to_string();
        }
        Ok(applied)
    }

    fn resolve(&self, addr: &SocketAddr, bpf_result: std::result::Result<(), i32>) -> Result<Applied> {
        strategy::resolve(self.strategy, bpf_result, procfs::tcp_migrate_req())
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

    /// Uses a migration program the caller holds (inherited across fork or exec from a
    /// privileged master) instead of loading one.
    pub(crate) fn use_program(&mut self, fd: RawFd) -> Result<()> {
        let prog = bpf::adopt_program(fd).map_err(|why| Error::new(libc::EINVAL, Step::Bpf, why))?;
        self.program = Some(prog);
        self.program_error = None;
        Ok(())
    }

    /// Takes `prev`'s migration program when this set has none.
    pub(crate) fn inherit(&mut self, prev: &Groups) -> Result<()> {
        if self.program.is_none() {
            if let Some(p) = &prev.program {
                self.program = Some(p.try_clone().map_err(|e| Error::sys(&e, Step::Bpf, "migration program", "dup"))?);
                self.program_error = None;
            }
        }
        Ok(())
    }

    pub(crate) fn program_fd(&self) -> Option<BorrowedFd<'_>> {
        self.program.as_ref().map(|p| p.as_fd())
    }
}
