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
//!
//! A retire never blocks its caller: servers are event loops, and a worker leaving its
//! groups still has requests in flight. Each call advances as far as it can without
//! waiting and returns how long until it wants to be called again (Progress::Again); the
//! caller keeps serving meanwhile. The waits it takes, in order:
//!
//! 1. Leaving the steering program's choice (steered groups): a sibling that is coming (a
//!    reload's new workers starting) is waited for, at most STEER_PATIENCE, while this
//!    socket stays in the choice (without an eligible sibling the program would fall back
//!    to the kernel's hash, over sockets whose workers may not accept yet). So is a
//!    reload's new generation until as many of its workers are eligible as the old
//!    generations keep in the choice, or all of it is in (Steering::successors_pending):
//!    the old workers still serve, and leaving to the first few new ones would pile every
//!    new connection on them while the rest start (measured with 100 workers). Then it
//!    leaves the choice, and STEER_GAP lets handshakes that chose it just before complete into
//!    the queue, which migrates whole (STEER_GAP_UNSERVED, shorter, when nobody accepts
//!    from the socket any more: its queue waits for the close). With a taker
//!    (`hand_over`), what arrives meanwhile is accepted and handed over instead of
//!    waiting for the close.
//! 2. The close token (close_token.rs): the sockets of one master's processes close in
//!    turn, waited for at most TURN_PATIENCE (pollable: Retirement::poll_fd()). Not for
//!    steered sockets that each have an eligible sibling: the program, not the kernel's
//!    hash, chooses where their connections migrate, and never a leaving socket.
//! 3. The close, and the turn kept for TURN_GAP after it.
//! 4. With drain: accepting until the queue stays empty, then 2 and 3 again for the rest.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::close_token::CloseToken;
use super::listener::Listener;
use crate::error::{Error, Result, Step};
use crate::log::{self, Level};
use crate::strategy::Strategy;
use crate::sys::socket;

/// How long a retiring process waits for its turn to close: closes take microseconds, so
/// only a holder that died makes anyone wait this long.
const TURN_PATIENCE: Duration = Duration::from_millis(200);

/// How long a process keeps the turn after closing its sockets: see the Holding phase.
const TURN_GAP: Duration = Duration::from_millis(10);

/// How long a retiring worker waits for a sibling to become eligible.
const STEER_PATIENCE: Duration = Duration::from_millis(300);

/// How long a retiring worker keeps its socket open after leaving the program's choice:
/// handshakes that chose it just before complete in well under this on a LAN. With a
/// taker the worker serves what lands meanwhile, so the gap costs nothing.
const STEER_GAP: Duration = Duration::from_millis(10);

/// The gap without a taker: nobody accepts from the socket any more, so everything queued
/// on it waits for the close (and the migration) for the whole gap, which is then added
/// to those clients' latency at every reload. Handshakes on loopback and a LAN complete
/// well within it; one completing later still migrates at its final ACK unless that ACK
/// lands in the microseconds of the close itself.
const STEER_GAP_UNSERVED: Duration = Duration::from_millis(2);

/// How often to look again for a sibling or a free turn (the token's fd can be polled
/// instead).
const RECHECK: Duration = Duration::from_millis(2);

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
    /// Not done: call again within this long (sooner when a listen fd, or the fd of
    /// Set::retire_poll_fd(), is readable), and keep serving meanwhile.
    Again(Duration),
}

/// What the turn, once taken, is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// The listeners whose groups migrate (a drain may follow for the others).
    Migrating,
    /// Every listener left (the end of a drain).
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not started.
    Idle,
    /// Still in the program's choice, waiting (until `patience`) for a sibling that is
    /// coming to become eligible.
    AwaitingSibling {
        patience: Instant,
    },
    /// Out of the program's choice; the handshakes that chose this socket complete until
    /// `gap`.
    LeavingChoice {
        gap: Instant,
    },
    /// Waiting for the close token since `since`.
    WaitingTurn {
        since: Instant,
        close: Close,
    },
    /// Closed, keeping the turn until `until`.
    Holding {
        until: Instant,
        then: AfterClose,
    },
    /// Accepting what is queued on the draining listeners.
    Draining {
        started: Instant,
        last_accept: Instant,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterClose {
    Drain,
    Done,
}

/// A set's way out of its groups: the drain's timing, where a retire stands, and the
/// close token its master's processes share.
#[derive(Debug)]
pub(crate) struct Retirement {
    drain: DrainTiming,
    phase: Phase,
    handed_over: u64,
    /// Shared with the workers forked from this set (and with the sets that inherit it):
    /// they close their sockets in turn.
    close_token: Option<CloseToken>,
    /// This process holds the token now (released on drop, should the set be freed
    /// half-way).
    holding: bool,
}

impl Default for Retirement {
    fn default() -> Self {
        Retirement {
            drain: DrainTiming::default(),
            phase: Phase::Idle,
            handed_over: 0,
            close_token: None,
            holding: false,
        }
    }
}

impl Drop for Retirement {
    fn drop(&mut self) {
        self.release_turn();
    }
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

    /// Shares `prev`'s close token (a reload's new set: every generation of one master
    /// takes turns with the others).
    pub(crate) fn inherit_close_token(&mut self, prev: &Retirement) -> std::io::Result<()> {
        if self.close_token.is_none() {
            if let Some(t) = &prev.close_token {
                self.close_token = Some(t.try_clone()?);
            }
        }
        Ok(())
    }

    /// The fd to poll (readable) for the wait the last step returned, when it is not a
    /// timer: the close token's, while waiting for the turn.
    pub(crate) fn poll_fd(&self) -> Option<RawFd> {
        match self.phase {
            Phase::WaitingTurn { .. } => self.close_token.as_ref().map(|t| t.poll_fd().as_raw_fd()),
            _ => None,
        }
    }

    /// Forgets a finished retire, so that the set may open and retire again.
    pub(crate) fn reset(&mut self) {
        self.release_turn();
        self.phase = Phase::Idle;
        self.handed_over = 0;
    }

    /// One step of leaving the groups, as far as it goes without waiting. `hand_over(fd,
    /// index)` receives each connection accepted on the way (the server serves it; giving
    /// it back refuses it, and it is closed); without it, nothing is accepted. On `Done`
    /// every listener is closed.
    pub(crate) fn step(
        &mut self,
        listeners: &mut [Listener],
        mut hand_over: Option<&mut dyn FnMut(OwnedFd, usize) -> Option<OwnedFd>>,
    ) -> Progress {
        loop {
            let now = Instant::now();
            match self.phase {
                Phase::Idle => {
                    self.phase = if listeners.iter().any(|l| l.claim.is_some()) {
                        Phase::AwaitingSibling { patience: now + STEER_PATIENCE }
                    } else {
                        Phase::WaitingTurn { since: now, close: Close::Migrating }
                    };
                }
                Phase::AwaitingSibling { patience } => {
                    // Still in the program's choice: while no sibling can take new
                    // connections, leaving would send them by the kernel's hash to sockets
                    // whose workers may not accept yet (a reload's, still starting).
                    if let Some(h) = hand_over.as_deref_mut() {
                        self.handed_over += accept_queued(listeners, h);
                    }
                    let found = siblings(listeners);
                    if matches!(found, Siblings::Coming | Siblings::Filling) && now < patience {
                        return Progress::Again(RECHECK);
                    }
                    for c in listeners.iter().filter_map(|l| l.claim.as_ref()) {
                        c.mark_retiring();
                    }
                    if found == Siblings::Filling {
                        log::emit(
                            Level::Debug,
                            "retire: the new generation was not all in after the patience; leaving the choice to those that are",
                        );
                    }
                    self.phase = if matches!(found, Siblings::Eligible | Siblings::Filling) {
                        let gap = if hand_over.is_some() { STEER_GAP } else { STEER_GAP_UNSERVED };
                        Phase::LeavingChoice { gap: now + gap }
                    } else {
                        if found == Siblings::Coming {
                            log::emit(Level::Debug, "retire: no sibling became eligible in time; closing anyway (the kernel spreads the queue)");
                        }
                        Phase::WaitingTurn { since: now, close: Close::Migrating }
                    };
                }
                Phase::LeavingChoice { gap } => {
                    if let Some(h) = hand_over.as_deref_mut() {
                        self.handed_over += accept_queued(listeners, h);
                    }
                    if now < gap {
                        // With a taker, come back often to accept what still lands here.
                        let wait = if hand_over.is_some() { (gap - now).min(RECHECK) } else { gap - now };
                        return Progress::Again(wait);
                    }
                    self.phase = Phase::WaitingTurn { since: now, close: Close::Migrating };
                }
                Phase::WaitingTurn { since, close } => {
                    // Steered sockets that each have an eligible sibling need no turn: the
                    // program sends what they hold, queued or half-open, to an eligible
                    // member only, never to one that is leaving.
                    let needs_turn = close == Close::All || !steered_to_siblings(listeners);
                    let got = needs_turn && self.close_token.as_ref().is_some_and(CloseToken::try_acquire);
                    if needs_turn && !got && self.close_token.is_some() {
                        let left = (since + TURN_PATIENCE).saturating_duration_since(now);
                        if !left.is_zero() {
                            // Kept waiting: serve what lands meanwhile. With the turn free,
                            // the close comes first and the queue migrates.
                            if let Some(h) = hand_over.as_deref_mut() {
                                self.handed_over += accept_queued(listeners, h);
                            }
                            return Progress::Again(left.min(RECHECK));
                        }
                        log::emit(
                            Level::Debug,
                            "retire: the close token did not come in time (its holder may have died); closing anyway",
                        );
                    }
                    self.holding = got;
                    let then = match close {
                        Close::Migrating => self.close_migrating(listeners),
                        Close::All => self.close_drained(listeners),
                    };
                    self.phase = if got { Phase::Holding { until: now + TURN_GAP, then } } else { after(then, now) };
                }
                Phase::Holding { until, then } => {
                    // The handshakes a closed socket left half-open migrate lazily, when
                    // their final ACK arrives, to a member chosen then; if the next member
                    // closed right now it would be that member, and the connection reset.
                    // Keep the turn until they are done (a round trip on a LAN; far less
                    // on loopback).
                    if now < until {
                        return Progress::Again(until - now);
                    }
                    self.release_turn();
                    self.phase = after(then, now);
                }
                Phase::Draining { started, last_accept } => {
                    let accepted = match hand_over.as_deref_mut() {
                        Some(h) => accept_queued(listeners, h),
                        None => 0,
                    };
                    self.handed_over += accepted;
                    let last_accept = if accepted > 0 { now } else { last_accept };
                    let (idle, elapsed) = (now - last_accept, now - started);
                    if idle >= self.drain.grace || elapsed >= self.drain.max {
                        if idle < self.drain.grace {
                            log::emit(Level::Info, "retire: drain time limit reached with connections still arriving");
                        }
                        self.phase = Phase::WaitingTurn { since: now, close: Close::All };
                        continue;
                    }
                    self.phase = Phase::Draining { started, last_accept };
                    return Progress::Again((self.drain.grace - idle).min(self.drain.max - elapsed));
                }
                Phase::Done => return Progress::Done { handed_over: self.handed_over },
            }
        }
    }

    /// Closes the listeners whose groups migrate; a drain follows when some do not.
    fn close_migrating(&mut self, listeners: &mut [Listener]) -> AfterClose {
        log_closing(listeners.iter().filter(|l| !drains(l) && l.fd.is_some()).count());
        let mut closed = 0;
        for l in listeners.iter_mut().filter(|l| !drains(l)) {
            if l.close() {
                closed += 1;
            }
        }
        if listeners.iter().all(|l| l.fd.is_none()) {
            // Logged at once, not after the turn's gap: with the line before the close
            // (log_closing), tests bracket the close's instant.
            log::emit(Level::Info, &format!("retired: closed {closed} listen socket(s); their queues migrate"));
            return AfterClose::Done;
        }
        if self.drain.shrink_backlog {
            // Not on deferred listeners: their connections wait as requests until data
            // arrives, then need a place in the accept queue, which a backlog of 0 limits
            // to one; they would be dropped.
            for l in listeners.iter().filter(|l| !l.options.deferred) {
                if let Some(held) = &l.fd {
                    if let Err(e) = socket::listen(held.borrow(), 0) {
                        log::emit(Level::Warn, &format!("{}: drain: listen(0): {e}", l.addr));
                    }
                }
            }
        }
        AfterClose::Drain
    }

    /// The end of a drain: closes what is left.
    fn close_drained(&mut self, listeners: &mut [Listener]) -> AfterClose {
        log_closing(listeners.iter().filter(|l| l.fd.is_some()).count());
        let n = close_all(listeners);
        log::emit(
            Level::Info,
            &format!("retired: drained {} connection(s), closed {n} listen socket(s)", self.handed_over),
        );
        AfterClose::Done
    }

    fn release_turn(&mut self) {
        if std::mem::take(&mut self.holding) {
            if let Some(t) = &self.close_token {
                t.release();
            }
        }
    }
}

/// The phase after a close: draining starts now, or nothing is left.
fn after(then: AfterClose, now: Instant) -> Phase {
    match then {
        AfterClose::Drain => Phase::Draining { started: now, last_accept: now },
        AfterClose::Done => Phase::Done,
    }
}

/// Whether the siblings of a retiring worker's steered sockets can take its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Siblings {
    /// Every steered listener has an eligible sibling (or some do and no other is coming).
    Eligible,
    /// As Eligible, but a newer generation is still taking over (successors_pending).
    Filling,
    /// Some listener has none yet, and one is coming (a slot being claimed, a fresh open).
    Coming,
    /// No listener has an eligible sibling and none is coming.
    NoneComing,
}

/// Whether every migrating socket still held is steered and has an eligible sibling: then
/// the steering program, not the kernel's hash, chooses where its connections migrate.
fn steered_to_siblings(listeners: &[Listener]) -> bool {
    listeners
        .iter()
        .filter(|l| l.fd.is_some() && !drains(l))
        .all(|l| l.claim.as_ref().is_some_and(|c| c.steering.has_servable(&[c.slot])))
}

fn siblings(listeners: &[Listener]) -> Siblings {
    let claims: Vec<_> = listeners.iter().filter_map(|l| l.claim.as_ref()).collect();
    let waiting = claims.iter().filter(|c| !c.steering.has_servable(&[c.slot])).count();
    let coming = claims.iter().any(|c| c.steering.sibling_coming(c.slot, STEER_PATIENCE));
    if waiting > 0 && coming {
        Siblings::Coming
    } else if waiting < claims.len() {
        if claims.iter().any(|c| c.steering.successors_pending(c.slot)) {
            Siblings::Filling
        } else {
            Siblings::Eligible
        }
    } else {
        Siblings::NoneComing
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

/// Logged just before a retire's close, as "retired: closed" is just after it: the two
/// lines bracket the instant whatever a client saw of the close (the kernel's close race,
/// a reset) happened, however long the worker waits for a CPU between the close and its
/// log line.
fn log_closing(n: usize) {
    if n > 0 {
        log::emit(Level::Debug, &format!("retire: closing {n} listen socket(s)"));
    }
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
            let conn = match socket::accept(held.borrow().as_fd()) {
                Ok(c) => c,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR | libc::ECONNABORTED) => continue,
                    _ => {
                        log::emit(Level::Warn, &format!("{}: retire: accept: {e}", l.addr));
                        break;
                    }
                },
            };
            accepted += 1;
            let raw = conn.as_raw_fd();
            if let Some(refused) = hand_over(conn, i) {
                drop(refused);
                log::emit(Level::Warn, &format!("{}: retire: the server refused connection fd {raw}; closed", l.addr));
            }
        }
    }
    accepted
}
