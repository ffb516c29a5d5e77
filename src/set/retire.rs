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

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::close_token::CloseToken;
use super::listener::Listener;
use crate::error::{Error, Result, Step};
use crate::log::{self, Level};
use crate::steering::SlotClaim;
use crate::strategy::Strategy;
use crate::sys::socket;

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
#[non_exhaustive]
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

impl DrainTiming {
    fn check(&self) -> Result<()> {
        if self.grace.is_zero() || self.max < self.grace {
            return Err(Error::new(
                libc::EINVAL,
                Step::Lifecycle,
                format!(
                    "drain grace {} ms and maximum {} ms: the grace must be positive and not above the maximum",
                    self.grace.as_millis(),
                    self.max.as_millis()
                ),
            ));
        }
        Ok(())
    }
}

/// Where a retire stands after one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Every listen socket is closed; `handed_over` connections were accepted on the way.
    Done { handed_over: u64 },
    /// Still draining: call again within this long (or when a listen fd is readable).
    Again(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Draining {
    started: Instant,
    last_accept: Instant,
    handed_over: u64,
}

/// What a set needs to leave its groups: the drain's timing and progress, and the close
/// token its master's processes share.
#[derive(Debug, Default)]
pub(crate) struct Retirement {
    drain: DrainTiming,
    draining: Option<Draining>,
    /// Shared with the workers forked from this set: they close their sockets in turn.
    close_token: Option<CloseToken>,
}

impl Retirement {
    pub(crate) fn set_drain(&mut self, timing: DrainTiming) -> Result<()> {
        timing.check()?;
        self.drain = timing;
        Ok(())
    }

    /// A master whose groups migrate creates the token its workers will share.
    pub(crate) fn ensure_close_token(&mut self) {
        if self.close_token.is_some() {
            return;
        }
        match CloseToken::new() {
            Ok(t) => self.close_token = Some(t),
            // Without it the workers' sockets still leave their groups, only not in turn.
            Err(e) => log::emit(
                Level::Warn,
                &format!(
                    "cannot create the close token (pipe2: {e}); workers will close their sockets without taking turns"
                ),
            ),
        }
    }

    /// Forgets a drain in progress (the sockets were closed another way).
    pub(crate) fn reset(&mut self) {
        self.draining = None;
    }

    /// One step of leaving the groups. `hand_over(fd, index)` receives each connection a
    /// drain accepts (the server serves it); giving it back (`Some`) refuses it, and it is
    /// closed. On `Done`, every listener is closed.
    pub(crate) fn step(
        &mut self,
        listeners: &mut [Listener],
        hand_over: &mut dyn FnMut(OwnedFd, usize) -> Option<OwnedFd>,
    ) -> Progress {
        let now = Instant::now();
        if self.draining.is_none() {
            // Migrating listeners leave at once: the kernel moves their queues, to a
            // member that must not be closing at the same instant (close_token.rs).
            steer_away(listeners);
            let turn = self.take_turn();
            let mut closed = 0;
            for l in listeners.iter_mut().filter(|l| !drains(l)) {
                if l.fd.take().is_some() {
                    closed += 1;
                }
            }
            let all_closed = listeners.iter().all(|l| l.fd.is_none());
            if all_closed {
                // Logged at once, not after the turn's gap: tests line up the instant of
                // the close with what their clients saw.
                log::emit(Level::Info, &format!("retired: closed {closed} listen socket(s); their queues migrate"));
            }
            self.end_turn(turn);
            if all_closed {
                close_all(listeners);
                return Progress::Done { handed_over: 0 };
            }
            if self.drain.shrink_backlog {
                // Not on deferred listeners: their connections wait as requests until data
                // arrives, then need a place in the accept queue, which a backlog of 0
                // limits to one; they would be dropped.
                for l in listeners.iter().filter(|l| !l.options.deferred) {
                    if let Some(held) = &l.fd {
                        if let Err(e) = socket::listen(held.borrow(), 0) {
                            log::emit(Level::Warn, &format!("{}: drain: listen(0): {e}", l.addr));
                        }
                    }
                }
            }
            self.draining = Some(Draining { started: now, last_accept: now, handed_over: 0 });
        }

        let accepted = accept_queued(listeners, hand_over);
        let d = self.draining.as_mut().expect("set above");
        d.handed_over += accepted;
        if accepted > 0 {
            d.last_accept = now;
        }
        let (idle, elapsed) = (now - d.last_accept, now - d.started);
        if idle >= self.drain.grace || elapsed >= self.drain.max {
            let handed_over = d.handed_over;
            let turn = self.take_turn();
            let n = close_all(listeners);
            self.draining = None;
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
            return Progress::Done { handed_over };
        }
        Progress::Again((self.drain.grace - idle).min(self.drain.max - elapsed))
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
}

/// Whether a listener's group has no migration, so leaving it means draining.
fn drains(l: &Listener) -> bool {
    l.applied.as_ref().is_some_and(|a| a.strategy == Strategy::Drain)
}

/// Whether a retire would accept connections to hand over (some held listener drains).
pub(crate) fn hands_over(listeners: &[Listener]) -> bool {
    listeners.iter().any(|l| l.fd.is_some() && drains(l))
}

/// Closes every socket and frees every slot the listeners hold; how many sockets.
pub(crate) fn close_all(listeners: &mut [Listener]) -> usize {
    listeners.iter_mut().map(|l| l.close() as usize).sum()
}

/// Accepts what waits on every held listener and hands it over; how many.
fn accept_queued(listeners: &[Listener], hand_over: &mut dyn FnMut(OwnedFd, usize) -> Option<OwnedFd>) -> u64 {
    let mut accepted = 0u64;
    for (i, l) in listeners.iter().enumerate() {
        let Some(held) = l.fd.as_ref() else { continue };
        loop {
            let conn = match socket::accept(held.borrow()) {
                Ok(c) => c,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR | libc::ECONNABORTED) => continue,
                    _ => {
                        log::emit(Level::Warn, &format!("{}: drain: accept: {e}", l.addr));
                        break;
                    }
                },
            };
            accepted += 1;
            let raw = conn.as_raw_fd();
            if let Some(refused) = hand_over(conn, i) {
                drop(refused);
                log::emit(Level::Warn, &format!("{}: drain: the server refused connection fd {raw}; closed", l.addr));
            }
        }
    }
    accepted
}

/// Steered listeners first leave the program's choice, so that no new handshake starts
/// on a socket about to close: one that completes just as its listener closes cannot
/// migrate and is reset. Waits (bounded) for a sibling to be eligible when one is
/// coming (a reload's new workers may still be starting), then for the handshakes
/// already begun here to complete into the queue, which migrates whole.
fn steer_away(listeners: &[Listener]) {
    let claims: Vec<&SlotClaim> = listeners.iter().filter_map(|l| l.claim.as_ref()).collect();
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
