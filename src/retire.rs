//! A worker leaving its groups (reload, upgrade, quit) without resetting a client.
//!
//! With migration (bpf or sysctl) leaving is closing: the kernel moves the queue and the
//! half-open requests of each closing listener to a surviving member.
//!
//! Without it (drain), the worker keeps accepting until its queue has stayed empty for a
//! grace period (or a maximum has passed), hands each connection to the server, and only
//! then closes. Two things can still be lost at the close: a connection that completed
//! its handshake in the instant between the last accept and the close, and a handshake in
//! progress (its request lives on the closing listener); with `deferred` (TCP_DEFER_ACCEPT)
//! every connection whose client has not sent data yet is such a request, so a drain
//! saves little there. Against the second, on listeners without `deferred`, the drain
//! first shrinks the listen backlog to 0: with net.ipv4.tcp_syncookies=1 (the default)
//! the kernel then answers new SYNs with a SYN cookie instead of keeping a request on this
//! listener, and a cookie is valid on any member of the group (the secrets are global),
//! so the client's final ACK completes on a survivor once this socket is gone. The cost:
//! while a connection waits in this socket's accept queue, new SYNs to it are dropped and
//! retried by the client (after 1 s), and cookie connections carry fewer TCP options when
//! timestamps are off.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::{Error, Result, Step};
use crate::lifecycle::{Role, Set};
use crate::log::{self, Level};
use crate::steer::SlotClaim;
use crate::strategy::Strategy;

/// How long a retiring process waits for its turn to close: closes take microseconds, so
/// only a holder that died makes anyone wait this long.
const TURN_PATIENCE: Duration = Duration::from_millis(200);

/// How long a process keeps the turn after closing its sockets: see end_turn().
const TURN_GAP: Duration = Duration::from_millis(10);

/// How long a retiring worker waits for a sibling to become eligible (steer_away()).
const STEER_PATIENCE: Duration = Duration::from_millis(300);

/// How long a retiring worker keeps its socket open after leaving the program's choice:
/// handshakes that chose it just before complete in well under this on a LAN.
const STEER_GAP: Duration = Duration::from_millis(10);

/// How long a drain waits for the queue to stay empty, and at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainTiming {
    pub grace: Duration,
    pub max: Duration,
    /// Shrink the listen backlog to 0 when the drain starts (see the module doc).
    pub shrink_backlog: bool,
}

impl Default for DrainTiming {
    fn default() -> Self {
        DrainTiming { grace: Duration::from_millis(20), max: Duration::from_millis(1000), shrink_backlog: true }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Draining {
    started: Instant,
    last_accept: Instant,
    handed_over: u64,
}

/// Where a retire stands after one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Every listen socket is closed; `handed_over` connections were accepted on the way.
    Done { handed_over: u64 },
    /// Still draining: call again within this long (or when a listen fd is readable).
    Again(Duration),
}

impl Set {
    /// One step of leaving the groups. `hand_over(fd, index)` receives each connection a
    /// drain accepts (the server serves it); giving it back (`Some`) refuses it, and it is
    /// closed.
    pub fn retire(&mut self, hand_over: &mut dyn FnMut(OwnedFd, usize) -> Option<OwnedFd>) -> Result<Progress> {
        match self.role() {
            Role::MasterOpen | Role::Adopted | Role::Bound | Role::Single => {}
            r => {
                return Err(Error::lifecycle(
                    libc::EINVAL,
                    format!(
                        "the set holds no sockets to retire ({}); retire is for a worker leaving its groups",
                        r.as_str()
                    ),
                ))
            }
        }
        let drains =
            |s: &Set, i: usize| s.listeners()[i].applied.as_ref().is_some_and(|a| a.strategy == Strategy::Drain);
        let now = Instant::now();
        if self.draining.is_none() {
            // Migrating listeners leave at once: the kernel moves their queues, to a
            // member that must not be closing at the same instant (close_token.rs).
            self.steer_away();
            let turn = self.take_turn();
            let mut closed = 0;
            for i in 0..self.listeners().len() {
                if !drains(self, i) && self.listeners_mut()[i].fd.take().is_some() {
                    closed += 1;
                }
            }
            let all_closed = (0..self.listeners().len()).all(|i| !drains(self, i) || self.listeners()[i].fd.is_none());
            if all_closed {
                // Logged at once, not after the turn's gap: tests line up the instant of
                // the close with what their clients saw.
                log::emit(Level::Info, &format!("retired: closed {closed} listen socket(s); their queues migrate"));
            }
            self.end_turn(turn);
            if all_closed {
                self.close_for_retire();
                return Ok(Progress::Done { handed_over: 0 });
            }
            if self.drain.shrink_backlog {
                // Not on deferred listeners: their connections wait as requests until data
                // arrives, then need a place in the accept queue, which a backlog of 0
                // limits to one; they would be dropped.
                for l in self.listeners().iter().filter(|l| !l.options.deferred) {
                    if let Some(held) = &l.fd {
                        // SAFETY: listen() on a socket this set holds.
                        if unsafe { libc::listen(held.raw(), 0) } != 0 {
                            let e = std::io::Error::last_os_error();
                            log::emit(Level::Warn, &format!("{}: drain: listen(0): {e}", l.addr));
                        }
                    }
                }
            }
            self.draining = Some(Draining { started: now, last_accept: now, handed_over: 0 });
        }

        let mut accepted = 0u64;
        for i in 0..self.listeners().len() {
            let Some(held) = self.listeners()[i].fd.as_ref() else { continue };
            let fd = held.raw();
            let addr = self.listeners()[i].addr;
            loop {
                // SAFETY: accept4 on a listening socket this set holds; NULL address out.
                let c = unsafe {
                    libc::accept4(
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                if c < 0 {
                    let e = std::io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) => break,
                        Some(libc::EINTR | libc::ECONNABORTED) => continue,
                        _ => {
                            log::emit(Level::Warn, &format!("{addr}: drain: accept: {e}"));
                            break;
                        }
                    }
                }
                accepted += 1;
                // SAFETY: c is a new connection fd owned by nobody else.
                let conn = unsafe { OwnedFd::from_raw_fd(c) };
                let raw = conn.as_raw_fd();
                if let Some(refused) = hand_over(conn, i) {
                    drop(refused);
                    log::emit(Level::Warn, &format!("{addr}: drain: the server refused connection fd {raw}; closed"));
                }
            }
        }
        let d = self.draining.as_mut().expect("set above");
        d.handed_over += accepted;
        if accepted > 0 {
            d.last_accept = now;
        }
        let (idle, elapsed) = (now - d.last_accept, now - d.started);
        if idle >= self.drain.grace || elapsed >= self.drain.max {
            let handed_over = d.handed_over;
            let turn = self.take_turn();
            let n = self.close_for_retire();
            self.end_turn(turn);
            log::emit(
                Level::Info,
                &format!(
                    "retired: drained {handed_over} connection(s) in {} ms, closed {n} listen socket(s){}",
                    elapsed.as_millis(),
                    if idle < self.drain.grace {
                        " (drain time limit reached with connections still arriving)"
                    } else {
                        ""
                    }
                ),
            );
            return Ok(Progress::Done { handed_over });
        }
        Ok(Progress::Again((self.drain.grace - idle).min(self.drain.max - elapsed)))
    }

    /// Steered listeners first leave the program's choice, so that no new handshake starts
    /// on a socket about to close: one that completes just as its listener closes cannot
    /// migrate and is reset. Waits (bounded) for a sibling to be eligible when one is
    /// coming (a reload's new workers may still be starting), then for the handshakes
    /// already begun here to complete into the queue, which migrates whole.
    fn steer_away(&self) {
        let claims: Vec<&SlotClaim> = self.listeners().iter().filter_map(|l| l.claim.as_ref()).collect();
        if claims.is_empty() {
            return;
        }
        for c in &claims {
            c.mark_retiring();
        }
        let deadline = Instant::now() + STEER_PATIENCE;
        let mut any_sibling;
        loop {
            let waiting = claims.iter().filter(|c| !c.steering.has_eligible(&[c.slot])).count();
            any_sibling = waiting < claims.len();
            if waiting == 0 || !claims.iter().any(|c| c.steering.sibling_coming(c.slot, STEER_PATIENCE)) {
                break;
            }
            if Instant::now() >= deadline {
                log::emit(
                    Level::Debug,
                    "retire: no sibling became eligible in time; closing anyway (the kernel spreads the queue)",
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if any_sibling {
            std::thread::sleep(STEER_GAP);
        }
    }

    fn take_turn(&self) -> bool {
        let got = self.close_token.as_ref().is_some_and(|t| t.acquire(TURN_PATIENCE));
        if self.close_token.is_some() && !got {
            log::emit(
                Level::Debug,
                "retire: the close token did not come in time (its holder may have died); closing anyway",
            );
        }
        got
    }

    fn end_turn(&self, got: bool) {
        if got {
            // The handshakes this socket left half-open migrate lazily, when their final
            // ACK arrives, to a member chosen then; if the next member closed right now it
            // would be that member, and the connection reset. Keep the turn until they are
            // done (a round trip on a LAN; far less on loopback).
            std::thread::sleep(TURN_GAP);
            if let Some(t) = &self.close_token {
                t.release();
            }
        }
    }

    /// Whether a retire would accept connections to hand over (some held listener drains).
    pub fn retire_hands_over(&self) -> bool {
        self.listeners()
            .iter()
            .any(|l| l.fd.is_some() && l.applied.as_ref().is_some_and(|a| a.strategy == Strategy::Drain))
    }

    /// Sets the drain's timing (before or during the life of the set).
    pub fn set_drain(&mut self, timing: DrainTiming) -> Result<()> {
        if timing.grace.is_zero() || timing.max < timing.grace {
            return Err(Error::new(
                libc::EINVAL,
                Step::Lifecycle,
                format!(
                    "drain grace {} ms and maximum {} ms: the grace must be positive and not above the maximum",
                    timing.grace.as_millis(),
                    timing.max.as_millis()
                ),
            ));
        }
        self.drain = timing;
        Ok(())
    }
}
