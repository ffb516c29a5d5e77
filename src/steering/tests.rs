//! The steering program and the health watch, on real sockets of one group (loopback,
//! port 0), through the crate's internals. Loading the program needs CAP_BPF: without it each test says so and returns.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::slots::{FLAG_OVERLOADED, FLAG_RETIRING, FLAG_STALE};
use super::verdict::tick_for;
use super::{new_group, Steering};
use crate::sys::fd::dup_cloexec;

fn steering_or_skip(test: &str) -> Option<Arc<Steering>> {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    match new_group(addr, super::slots::DEFAULT_CAPACITY) {
        Ok(s) => Some(s),
        Err(errno) if !nix::unistd::geteuid().is_root() => {
            eprintln!("SKIP {test}: cannot load the steering program (errno {errno}; needs CAP_BPF)");
            None
        }
        Err(errno) => panic!("root could not load the steering program: errno {errno}"),
    }
}

fn member(addr: SocketAddr, s: &Steering) -> TcpListener {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_port(true).unwrap();
    sock.bind(&addr.into()).unwrap();
    // Room for the overload test's growing queue: the verdict takes eight growing
    // readings of the queues.
    sock.listen(4096).unwrap();
    sock.set_nonblocking(true).unwrap();
    s.attach(sock.as_fd()).unwrap();
    sock.into()
}

fn inode(l: &TcpListener) -> u64 {
    std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap().ino()
}

fn accept_all(l: &TcpListener) -> usize {
    let mut n = 0;
    loop {
        match l.accept() {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn connect(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
}

#[test]
fn new_connections_go_to_eligible_slots_only_and_evenly() {
    let Some(s) = steering_or_skip("new_connections_go_to_eligible_slots_only_and_evenly") else { return };
    let addr = s.addr;
    let (a, b) = (member(addr, &s), member(addr, &s));
    let ca = s.claim(a.as_fd(), inode(&a), 128).unwrap();
    let cb = s.claim(b.as_fd(), inode(&b), 128).unwrap();

    let _c = connect(addr, 200);
    let (na, nb) = (accept_all(&a), accept_all(&b));
    assert_eq!(na + nb, 200);
    assert!(na >= 60 && nb >= 60, "both eligible: an even spread expected, got {na}/{nb}");

    s.table().set_flags(ca.slot, FLAG_STALE);
    let _c = connect(addr, 100);
    assert_eq!((accept_all(&a), accept_all(&b)), (0, 100), "a stalled slot gets nothing");

    s.table().clear_flags(ca.slot, FLAG_STALE);
    cb.mark_retiring();
    let _c = connect(addr, 100);
    assert_eq!((accept_all(&a), accept_all(&b)), (100, 0), "a retiring slot gets nothing");

    // No eligible slot at all: the kernel's own hash, never a refusal.
    ca.mark_retiring();
    let _c = connect(addr, 100);
    assert_eq!(accept_all(&a) + accept_all(&b), 100);
}

#[test]
fn a_new_worker_of_a_beating_group_is_chosen_from_its_first_heartbeat_on() {
    let Some(s) = steering_or_skip("a_new_worker_of_a_beating_group_is_chosen_from_its_first_heartbeat_on") else {
        return;
    };
    let addr = s.addr;
    let a = member(addr, &s);
    let ca = s.claim(a.as_fd(), inode(&a), 128).unwrap();
    assert_eq!(s.status()[0].state, super::SlotState::Healthy, "the group's first worker: nothing beats yet");
    ca.beat();
    // A reload's new worker joins: its loop has not run yet.
    let b = member(addr, &s);
    let cb = s.claim(b.as_fd(), inode(&b), 128).unwrap();
    assert_eq!(s.status()[1].state, super::SlotState::Joining);
    assert!(s.sibling_coming(ca.slot, Duration::ZERO), "its siblings count it as coming");
    let _c = connect(addr, 100);
    assert_eq!((accept_all(&a), accept_all(&b)), (100, 0), "nothing for a worker whose loop has not run");
    assert!(s.has_servable(&[ca.slot]), "a leaving sibling may leave the choice for it");
    // ...and with nothing else eligible it is the one chosen: not the kernel's hash, which
    // would also pick the leaving socket.
    ca.mark_retiring();
    let _c = connect(addr, 100);
    assert_eq!((accept_all(&a), accept_all(&b)), (0, 100), "the warming worker, rather than a leaving one");
    s.table().clear_flags(ca.slot, super::slots::FLAG_RETIRING);
    cb.beat();
    ca.beat(); // it has seen its 100 (else the load-aware choice evens them out first)
    assert_eq!(s.status()[1].state, super::SlotState::Healthy);
    let _c = connect(addr, 200);
    let (na, nb) = (accept_all(&a), accept_all(&b));
    assert!(na >= 60 && nb >= 60, "both chosen from its first heartbeat on, got {na}/{nb}");
    // One that never beats is chosen anyway once the watch has seen it wait WARMING_MAX.
    let c = member(addr, &s);
    let cc = s.claim(c.as_fd(), inode(&c), 128).unwrap();
    s.watch(Duration::from_millis(50));
    assert_eq!(s.status()[2].state, super::SlotState::Joining);
    std::thread::sleep(Duration::from_millis(1050));
    s.watch(Duration::from_millis(50));
    assert_eq!(s.status()[2].state, super::SlotState::Healthy);
    drop((ca, cb, cc));
}

#[test]
fn a_closing_listener_hands_its_queue_to_an_eligible_sibling() {
    let Some(s) = steering_or_skip("a_closing_listener_hands_its_queue_to_an_eligible_sibling") else { return };
    let addr = s.addr;
    let (a, b) = (member(addr, &s), member(addr, &s));
    let ca = s.claim(a.as_fd(), inode(&a), 128).unwrap();
    let cb = s.claim(b.as_fd(), inode(&b), 128).unwrap();
    s.table().set_flags(cb.slot, FLAG_STALE);
    let _c = connect(addr, 50);
    std::thread::sleep(Duration::from_millis(20));
    s.table().clear_flags(cb.slot, FLAG_STALE);
    ca.mark_retiring();
    drop(a);
    assert_eq!(accept_all(&b), 50, "all 50 queued on the closed listener moved to its sibling");
    drop(ca);
    assert_eq!(s.table().flags(0).load(Ordering::Acquire) & FLAG_RETIRING, 0);
}

#[test]
fn the_watch_marks_a_stalled_slot_moves_its_queue_and_brings_it_back() {
    let Some(s) = steering_or_skip("the_watch_marks_a_stalled_slot_moves_its_queue_and_brings_it_back") else { return };
    let addr = s.addr;
    let (a, b) = (member(addr, &s), member(addr, &s));
    let ca = s.claim(a.as_fd(), inode(&a), 128).unwrap();
    let cb = s.claim(b.as_fd(), inode(&b), 128).unwrap();
    ca.beat();
    cb.beat();
    // `a` never accepts: its share of these waits in its queue.
    let _c = connect(addr, 100);
    let threshold = Duration::from_millis(40);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut served_by_b = accept_all(&b);
    while Instant::now() < deadline {
        cb.beat();
        watch(&s, threshold);
        served_by_b += accept_all(&b);
        if served_by_b == 100 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(served_by_b, 100, "the stalled slot's queue moved to its sibling");
    let flags = s.table().flags(ca.slot).load(Ordering::Acquire);
    assert_ne!(flags & FLAG_STALE, 0, "still marked stalled: its heartbeat did not move");
    // Its socket listens again (the rescue re-listened it), and gets nothing new.
    assert_eq!(accept_all(&a), 0);
    let _c = connect(addr, 50);
    assert_eq!(accept_all(&b), 50);
    // It beats again: back in the choice.
    ca.beat();
    watch(&s, threshold);
    assert_eq!(s.table().flags(ca.slot).load(Ordering::Acquire) & FLAG_STALE, 0);
    let _c = connect(addr, 100);
    assert!(accept_all(&a) > 10, "the recovered slot gets its share again");
}

/// One tick of the watch over a group, what reuseport_watch() does for each of a set's.
fn watch(s: &Arc<Steering>, threshold: Duration) {
    s.watch(threshold);
}

#[test]
fn a_worker_whose_queue_keeps_growing_is_overloaded_until_it_catches_up() {
    let Some(s) = steering_or_skip("a_worker_whose_queue_keeps_growing_is_overloaded_until_it_catches_up") else {
        return;
    };
    let addr = s.addr;
    let (a, b) = (member(addr, &s), member(addr, &s));
    let ca = s.claim(a.as_fd(), inode(&a), 1024).unwrap();
    let cb = s.claim(b.as_fd(), inode(&b), 1024).unwrap();
    let threshold = Duration::from_millis(40);
    // Both beat (their loops run), only `b` accepts: `a`'s queue grows at every tick.
    let mut clients = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let overloaded = loop {
        ca.beat();
        cb.beat();
        clients.extend(connect(addr, 8));
        accept_all(&b);
        s.watch(threshold);
        if s.table().flags(ca.slot).load(Ordering::Acquire) & FLAG_OVERLOADED != 0 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(tick_for(threshold));
    };
    assert!(overloaded, "a beating worker whose queue grew at every tick is overloaded");
    assert_eq!(s.table().flags(ca.slot).load(Ordering::Acquire) & FLAG_STALE, 0, "its heartbeat moves: not stalled");
    let _c = connect(addr, 50);
    assert_eq!(accept_all(&b), 50, "new connections go to the other worker");
    // It catches up: back in the choice at the next reading of the queues (under traffic,
    // two thresholds apart).
    accept_all(&a);
    let deadline = Instant::now() + 4 * threshold;
    while Instant::now() < deadline {
        ca.beat();
        cb.beat();
        let _c = connect(addr, 2);
        accept_all(&a);
        accept_all(&b);
        s.watch(threshold);
        std::thread::sleep(tick_for(threshold));
    }
    assert_eq!(s.table().flags(ca.slot).load(Ordering::Acquire) & FLAG_OVERLOADED, 0, "its queue emptied");
}

#[test]
fn a_process_joining_without_a_master_leaves_the_groups_program_in_place() {
    let Some(s) = steering_or_skip("a_process_joining_without_a_master_leaves_the_groups_program_in_place") else {
        return;
    };
    let addr = s.addr;
    let (a, b) = (member(addr, &s), member(addr, &s));
    let _ca = s.claim(a.as_fd(), inode(&a), 128).unwrap();
    let cb = s.claim(b.as_fd(), inode(&b), 128).unwrap();
    // `nginx -t` beside the running server: it joins the group for a moment.
    let mut checker = crate::Set::new();
    checker.add_spec(&addr.to_string()).unwrap();
    checker.open_single().unwrap();
    let applied = checker.listeners()[0].applied.clone().unwrap();
    assert!(applied.reason.contains("stays in place"), "{applied:?}");
    let joined = TcpListener::from(dup_cloexec(checker.fd(0).unwrap().as_raw_fd()).unwrap());
    joined.set_nonblocking(true).unwrap();
    // Still the steering program: the stalled slot and the slotless socket get nothing.
    s.table().set_flags(cb.slot, FLAG_STALE);
    let _c = connect(addr, 100);
    assert_eq!((accept_all(&a), accept_all(&b), accept_all(&joined)), (100, 0, 0));
}

/// `n` member sockets with slots (or unlisted when the table is full), like `n` workers.
fn workers(s: &Arc<Steering>, n: usize) -> Vec<(TcpListener, Result<super::SlotClaim, super::Unlisted>)> {
    raise_fd_limit(4 * n as u64 + 20_000);
    (0..n)
        .map(|_| {
            let l = member(s.addr, s);
            let c = s.claim(l.as_fd(), inode(&l), 128);
            (l, c)
        })
        .collect()
}

fn raise_fd_limit(want: u64) {
    crate::sys::fd::raise_nofile(want).unwrap();
}

/// Connects `per` connections per worker in batches, accepting as it goes; what each got.
fn serve_round(addr: SocketAddr, listeners: &[&TcpListener], per: usize) -> Vec<usize> {
    let mut got = vec![0; listeners.len()];
    for _ in 0..per {
        let clients = connect(addr, listeners.len());
        std::thread::sleep(Duration::from_millis(2));
        for (k, l) in listeners.iter().enumerate() {
            got[k] += accept_all(l);
        }
        drop(clients);
    }
    got
}

#[test]
fn one_64_and_1024_workers_each_get_their_share() {
    for n in [1usize, 64, 1024] {
        let Some(s) = steering_or_skip("one_64_and_1024_workers_each_get_their_share") else { return };
        let ws = workers(&s, n);
        assert!(ws.iter().all(|(_, c)| c.is_ok()), "{n} workers fit the default table");
        let ls: Vec<&TcpListener> = ws.iter().map(|(l, _)| l).collect();
        // The choice is a hash of the 4-tuple: with 16 a worker on average, one left with
        // none is e^-16 likely per worker (6 left one of 1024 idle in about 1 run in 20).
        let per = if n == 1 { 50 } else { 16 };
        let got = serve_round(s.addr, &ls, per);
        assert_eq!(got.iter().sum::<usize>(), per * n, "every connection served");
        let idle = got.iter().filter(|&&g| g == 0).count();
        assert_eq!(idle, 0, "{n} workers: {idle} got nothing: {got:?}");
        let max = *got.iter().max().unwrap();
        assert!(max <= 3 * per, "{n} workers: one got {max} of {per} each on average");
    }
}

#[test]
fn a_worker_the_table_cannot_hold_still_gets_its_share() {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let s = match new_group(addr, super::slots::MIN_CAPACITY) {
        Ok(s) => s,
        Err(_) if !nix::unistd::geteuid().is_root() => {
            eprintln!("SKIP a_worker_the_table_cannot_hold_still_gets_its_share: needs CAP_BPF");
            return;
        }
        Err(e) => panic!("errno {e}"),
    };
    let mut ws = workers(&s, super::slots::MIN_CAPACITY + 1);
    let last = ws.len() - 1;
    let why = match &ws[last].1 {
        Err(u) => u.why.clone(),
        Ok(_) => panic!("the table holds {} slots", super::slots::MIN_CAPACITY),
    };
    assert!(why.contains(&format!("all {} steering slots are taken", super::slots::MIN_CAPACITY)), "{why}");
    assert_eq!(s.table().unlisted().load(Ordering::SeqCst), 1);
    let ls: Vec<&TcpListener> = ws.iter().map(|(l, _)| l).collect();
    let got = serve_round(addr, &ls, 20);
    assert!(got[last] >= 5, "the unlisted worker gets connections from the kernel's hash: {got:?}");
    // It leaves: steering again.
    let (l, _) = ws.pop().unwrap();
    drop(l);
    assert_eq!(s.table().unlisted().load(Ordering::SeqCst), 0);
    s.table().set_flags(ws[0].1.as_ref().unwrap().slot, FLAG_STALE);
    let ls: Vec<&TcpListener> = ws.iter().map(|(l, _)| l).collect();
    let got = serve_round(addr, &ls, 10);
    assert_eq!(got[0], 0, "steered around a stalled slot again: {got:?}");
}

/// A member socket whose owner has claimed its slot and beaten once.
fn beating_member(s: &Arc<Steering>) -> (TcpListener, super::SlotClaim) {
    let l = member(s.addr, s);
    let claim = s.claim(l.as_fd(), inode(&l), 128).unwrap();
    claim.beat();
    (l, claim)
}

#[test]
fn the_watch_sleeps_when_nothing_arrives_and_ticks_when_connections_do() {
    let Some(s) = steering_or_skip("the_watch_sleeps_when_nothing_arrives_and_ticks_when_connections_do") else {
        return;
    };
    let ((a, _ca), (b, _cb)) = (beating_member(&s), beating_member(&s));
    let threshold = Duration::from_millis(40);
    assert_eq!(s.watch(threshold), threshold, "just started: not quiet for long enough");
    std::thread::sleep(super::watch::QUIET_AFTER);
    assert_eq!(s.watch(threshold), super::watch::IDLE_TICK, "a second without arrivals: sleep");
    let _c = connect(s.addr, 4);
    assert!(s.watch(threshold) <= threshold, "connections arrived: tick again");
    accept_all(&a);
    accept_all(&b);
}

#[test]
fn the_watch_wakes_when_a_verdict_is_due_not_before() {
    let Some(s) = steering_or_skip("the_watch_wakes_when_a_verdict_is_due_not_before") else {
        return;
    };
    let ((_a, ca), (b, cb)) = (beating_member(&s), beating_member(&s));
    let threshold = Duration::from_millis(40);
    s.watch(threshold);
    // `a` stops; connections arrive. Following the delays the watch asks for, the
    // verdict comes at the second call: the first is told to come back when the first
    // connection sent to `a` has waited the threshold (the program stamped its arrival),
    // not a few milliseconds later to look again.
    let sent = Instant::now();
    let _c = connect(s.addr, 16);
    let mut calls = 0;
    let judged = loop {
        calls += 1;
        let next = s.watch(threshold);
        if s.table().flags(ca.slot).load(Ordering::Acquire) & FLAG_STALE != 0 {
            break Instant::now();
        }
        assert!(calls < 10, "no verdict after {calls} ticks");
        cb.beat();
        accept_all(&b);
        std::thread::sleep(next);
    };
    // The stamps are CLOCK_MONOTONIC_COARSE: to within a jiffy (4 ms at HZ=250).
    let jiffy = Duration::from_millis(4);
    assert!(judged - sent + jiffy >= threshold, "judged {:?} after the first connection: too early", judged - sent);
    assert!(calls <= 3, "{calls} ticks to a verdict");
    assert_eq!(s.table().flags(cb.slot).load(Ordering::Acquire) & FLAG_STALE, 0);
}

#[test]
fn a_failed_creation_names_the_step_the_cause_and_the_fix() {
    let e = super::CreateError { errno: libc::EPERM, step: "bpf(BPF_PROG_LOAD) of the steering program" };
    let text = e.to_string();
    assert!(text.starts_with("bpf(BPF_PROG_LOAD) of the steering program: "), "{text}");
    assert!(text.contains("CAP_BPF") && text.contains("seccomp"), "{text}");
    let e = super::CreateError { errno: libc::ENOMEM, step: "bpf(BPF_MAP_CREATE) of the slot table" };
    assert!(e.to_string().contains("memory cgroup"), "{e}");
    let e = super::CreateError { errno: libc::EIO, step: "mmap of the slot table" };
    assert!(!e.to_string().contains('('), "no hint for an error without one: {e}");
}

/// A listener of the group that is not the library's (another binary's, e.g. stock nginx's).
fn foreign(addr: SocketAddr) -> TcpListener {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_port(true).unwrap();
    sock.bind(&addr.into()).unwrap();
    sock.listen(128).unwrap();
    sock.set_nonblocking(true).unwrap();
    sock.into()
}

#[test]
fn with_its_own_sockets_leaving_a_group_sends_new_connections_to_its_fallback() {
    let Some(s) = steering_or_skip("with_its_own_sockets_leaving_a_group_sends_new_connections_to_its_fallback") else {
        return;
    };
    let (a, ca) = beating_member(&s);
    let other = foreign(s.addr);
    s.table().set_flags(ca.slot, FLAG_RETIRING);
    // Nothing listed and no fallback: the kernel's hash, over the leaving socket too.
    let _c = connect(s.addr, 64);
    let (to_a, to_other) = (accept_all(&a), accept_all(&other));
    assert!(to_a > 0 && to_other > 0, "the kernel's hash over both: {to_a} / {to_other}");
    assert!(s.add_fallback(other.as_fd()).unwrap());
    let _c = connect(s.addr, 64);
    assert_eq!((accept_all(&a), accept_all(&other)), (0, 64), "all to the fallback, none to the leaving socket");
    // Listed again: its own socket, not the fallback.
    s.table().clear_flags(ca.slot, FLAG_RETIRING);
    let _c = connect(s.addr, 64);
    assert_eq!((accept_all(&a), accept_all(&other)), (64, 0));
}

#[test]
fn in_an_upgrade_the_old_generations_last_worker_stopped_has_its_queue_moved_to_the_new_one() {
    let name = "in_an_upgrade_the_old_generations_last_worker_stopped_has_its_queue_moved_to_the_new_one";
    let Some(old) = steering_or_skip(name) else { return };
    let addr = old.addr;
    let ((a, ca), (b, cb)) = (beating_member(&old), beating_member(&old));
    // `b` stops: it neither accepts nor beats again, and its share of these waits for it.
    let _c = connect(addr, 100);
    // What `a` accepts now and later (a handshake may still be completing) is its share.
    let mut from_a = accept_all(&a);
    // The new binary's master attaches its own program and slots, with a worker...
    let new = new_group(addr, super::slots::DEFAULT_CAPACITY).unwrap();
    let (c, _cc) = beating_member(&new);
    // ...and the old master's running worker retires: the stopped one is the last of the
    // old table, but not of the group.
    ca.mark_retiring();
    let threshold = Duration::from_millis(40);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut served_by_c = 0;
    while Instant::now() < deadline && from_a + served_by_c < 100 {
        watch(&old, threshold);
        from_a += accept_all(&a);
        served_by_c += accept_all(&c);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(from_a + served_by_c, 100, "the old master moved the stopped worker's queue to the new generation");
    assert!(served_by_c >= 10, "the stopped worker had a share, now served by the new worker: {served_by_c}");
    assert_ne!(old.table().flags(cb.slot).load(Ordering::Acquire) & FLAG_STALE, 0, "judged stalled");
    assert_eq!(accept_all(&b), 0, "nothing left for it");
}

#[test]
fn while_its_program_chooses_an_outsider_is_no_sibling_for_the_last_worker() {
    let name = "while_its_program_chooses_an_outsider_is_no_sibling_for_the_last_worker";
    let Some(s) = steering_or_skip(name) else { return };
    let (_a, ca) = beating_member(&s);
    // Another listener of the group outside the table, as an old generation's closing
    // socket or `nginx -t`'s would be: the program never chooses it.
    let _other = foreign(s.addr);
    // The worker stops accepting while the program keeps sending it connections.
    let threshold = Duration::from_millis(40);
    let mut open = Vec::new();
    let until = Instant::now() + threshold * 8;
    while Instant::now() < until {
        open.extend(connect(s.addr, 2));
        watch(&s, threshold);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        s.table().flags(ca.slot).load(Ordering::Acquire) & FLAG_STALE,
        0,
        "the last worker its program chooses is not judged"
    );
}

/// A worker process for `slot`: an event loop that sleeps in epoll_wait() on `l`, and at
/// each wakeup accepts what waits and beats (as SlotClaim::beat() records it). Only
/// system calls and atomics in the child: the test binary is multithreaded.
fn event_loop_worker(s: &Arc<Steering>, l: &TcpListener, slot: usize) -> libc::pid_t {
    let t = s.table();
    let (beats, arrivals, seen) = (t.beats(slot), t.arrivals(slot), t.seen(slot));
    let fd = l.as_raw_fd();
    // SAFETY: the child makes system calls and atomic stores only, then _exit()s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: system calls on the child's own fds and stack, atomics in the shared
        // table; the loop never returns (the parent kills the child).
        unsafe {
            // Other tests' sockets, inherited, would outlive their close in the parent.
            libc::syscall(libc::SYS_close_range, 3, fd - 1, 0);
            libc::syscall(libc::SYS_close_range, fd + 1, u32::MAX, 0);
            let ep = libc::epoll_create1(0);
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev);
            loop {
                beats.fetch_add(1, Ordering::SeqCst);
                seen.store(arrivals.load(Ordering::SeqCst), Ordering::SeqCst);
                libc::epoll_wait(ep, &mut ev, 1, -1);
                loop {
                    let c = libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK);
                    if c < 0 {
                        break;
                    }
                    libc::close(c);
                }
            }
        }
    }
    pid
}

#[test]
fn a_stalled_worker_asleep_in_epoll_with_nothing_queued_is_given_connections_again_a_stopped_one_is_not() {
    let name = "a_stalled_worker_asleep_in_epoll_with_nothing_queued_is_given_connections_again_a_stopped_one_is_not";
    let Some(s) = steering_or_skip(name) else { return };
    let addr = s.addr;
    let (a, b) = (member(addr, &s), member(addr, &s));
    let ca = s.claim(a.as_fd(), inode(&a), 128).unwrap();
    let cb = s.claim(b.as_fd(), inode(&b), 128).unwrap();
    cb.beat();
    let t = s.table();
    // `a` is served by a process of its own, asleep in epoll_wait() between connections.
    let child = event_loop_worker(&s, &a, ca.slot);
    t.pid(ca.slot).store(child as u32, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(3);
    while !crate::sys::procfs::waits_for_events(child as u32) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let threshold = Duration::from_millis(40);
    // Judged stalled while it waits there with nothing queued: what a worker starved of
    // CPU past the threshold comes back to once the rescue has moved its queue (woken by
    // a connection, not run for the threshold, it finds its queue gone and sleeps again,
    // and nothing is sent to a stalled slot). Only the watch can bring it back.
    // The watch knows its heartbeat: a still one from now on.
    watch(&s, threshold);
    // The two connections it was sent before the verdict, moved to `b` by the rescue, are
    // still unseen in its score.
    t.arrivals(ca.slot).fetch_add(2, Ordering::SeqCst);
    t.set_flags(ca.slot, FLAG_STALE);
    let beats_before = t.beats(ca.slot).load(Ordering::SeqCst);
    let mut open = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until && t.beats(ca.slot).load(Ordering::SeqCst) == beats_before {
        open.extend(connect(addr, 2));
        cb.beat();
        watch(&s, threshold);
        accept_all(&b);
        std::thread::sleep(Duration::from_millis(10));
    }
    let woke = t.beats(ca.slot).load(Ordering::SeqCst) > beats_before;
    let returned = t.flags(ca.slot).load(Ordering::Acquire) & FLAG_STALE == 0;
    // Stopped (SIGSTOP), with nothing queued: never given connections again.
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child, libc::SIGSTOP) };
    let until = Instant::now() + Duration::from_secs(3);
    while crate::sys::procfs::waits_for_events(child as u32) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Its last beats are the watch's (a beat it took on waking must not lift the flag).
    watch(&s, threshold);
    t.set_flags(ca.slot, FLAG_STALE);
    let until = Instant::now() + threshold * 8;
    let mut stopped_stays_out = true;
    while Instant::now() < until {
        open.extend(connect(addr, 2));
        cb.beat();
        watch(&s, threshold);
        accept_all(&b);
        stopped_stays_out &= t.flags(ca.slot).load(Ordering::Acquire) & FLAG_STALE != 0;
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: our own child, killed and reaped.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    assert!(woke, "given connections again, it woke and beat");
    assert!(returned, "back in the choice");
    assert!(stopped_stays_out, "a stopped worker is not given connections again");
}
