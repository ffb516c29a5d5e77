//! Retire and the hand-over between generations, through the Rust API, on real sockets
//! in one process: a set that inherits from another shares its steering context and close
//! token, as a forked worker's copy does. Loading the programs needs CAP_BPF: without it
//! each test says so and returns (CI runs as root).

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use reuseport::{Progress, Set, SlotState, Strategy};

fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIP {test}: needs CAP_BPF to load the library's programs (run as root)");
    }
    root
}

/// A master set on a kernel-chosen port of 127.0.0.1, opened; `threshold` None: not
/// steered (the plain migration program).
fn master(strategy: Strategy, threshold: Option<Duration>) -> (Set, SocketAddr) {
    let mut m = Set::new();
    m.add_spec("127.0.0.1:0 backlog=256").unwrap();
    m.set_strategy(strategy).unwrap();
    match threshold {
        Some(t) => m.set_health_threshold(t),
        None => m.set_steering(false).unwrap(),
    }
    m.master_open().unwrap();
    let addr = m.listeners()[0].addr();
    (m, addr)
}

/// A worker of `m` that binds its own socket (what a forked worker does, here by
/// inheriting what the fork would have copied).
fn worker(m: &Set, addr: SocketAddr) -> Set {
    let mut w = Set::new();
    w.add_spec(&addr.to_string()).unwrap();
    w.set_strategy(m.strategy()).unwrap();
    w.set_health_threshold(m.health_threshold());
    w.inherit(m).unwrap();
    w.worker_bind().unwrap();
    w
}

/// A reload's set for `addr`: it takes the old set's steering context over and opens (a
/// new generation).
fn reload(old: &Set, addr: SocketAddr) -> Set {
    let mut new = Set::new();
    new.add_spec(&addr.to_string()).unwrap();
    new.inherit(old).unwrap();
    new.master_open().unwrap();
    new
}

/// How many slots of the set's first group are out of the program's choice, leaving.
fn retiring(set: &Set) -> usize {
    set.slots(0).unwrap().iter().filter(|x| x.state == SlotState::Retiring).count()
}

fn listener_of(set: &Set) -> TcpListener {
    let l = TcpListener::from(set.fd(0).unwrap().try_clone_to_owned().unwrap());
    l.set_nonblocking(true).unwrap();
    l
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

/// One retire call, timed: it must return at once whatever it waits for.
fn step(set: &mut Set, hand: Option<&mut dyn FnMut(OwnedFd, usize) -> Option<OwnedFd>>) -> Progress {
    let start = Instant::now();
    let p = set.retire(hand).unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_millis(5), "a retire call took {took:?}: it must not wait");
    p
}

#[test]
fn retire_returns_at_once_while_another_process_holds_the_turn() {
    if !root_or_skip("retire_returns_at_once_while_another_process_holds_the_turn") {
        return;
    }
    let (mut m, addr) = master(Strategy::Bpf, None);
    let mut w = worker(&m, addr);
    // The master retires first: it takes the turn, closes, and keeps the turn 10 ms.
    let Progress::Again(hold) = step(&mut m, None) else { panic!("the master keeps the turn after its close") };
    assert!(hold <= Duration::from_millis(10));
    assert!(m.fd(0).is_none(), "the master's socket closed at once");
    // The worker cannot have the turn yet: it says when to come back, and keeps its socket.
    let Progress::Again(again) = step(&mut w, None) else { panic!("the turn is taken") };
    assert!(again <= Duration::from_millis(2), "{again:?}");
    assert!(w.fd(0).is_some(), "no close without the turn");
    let token = w.retire_poll_fd().expect("waiting for the turn: an fd to poll");
    // Once the master's gap is over its next call gives the turn back.
    std::thread::sleep(hold);
    assert_eq!(step(&mut m, None), Progress::Done { handed_over: 0 });
    let mut fds = [nix::poll::PollFd::new(
        // SAFETY: the set keeps the fd open across this poll.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(token) },
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap(), 1, "the token is free");
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Progress::Again(d) = step(&mut w, None) {
        assert!(Instant::now() < deadline, "the worker never finished");
        std::thread::sleep(d);
    }
    assert!(w.fd(0).is_none());
}

#[test]
fn a_steered_worker_hands_over_what_arrives_while_it_leaves_and_loses_nothing() {
    if !root_or_skip("a_steered_worker_hands_over_what_arrives_while_it_leaves_and_loses_nothing") {
        return;
    }
    let (mut m, addr) = master(Strategy::Bpf, Some(Duration::from_millis(50)));
    let mut w1 = worker(&m, addr);
    let w2 = worker(&m, addr);
    m.release().unwrap();
    assert_eq!(w1.steered(0), Some(true));
    assert_eq!(m.slots(0).unwrap().len(), 2, "both workers hold a slot of the one table");
    let (l1, l2) = (listener_of(&w1), listener_of(&w2));

    // Connections queue on both; w1 starts leaving without accepting them itself.
    let clients: Vec<TcpStream> = (0..60).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(20));
    let mut taken = Vec::new();
    let mut hand = |fd: OwnedFd, _i: usize| {
        taken.push(fd);
        None
    };
    let first = step(&mut w1, Some(&mut hand));
    assert!(matches!(first, Progress::Again(_)), "a sibling is eligible: it waits the gap before closing");
    assert!(w1.fd(0).is_some());
    // While it leaves, new connections go to its sibling only.
    let late: Vec<TcpStream> = (0..30).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(20));
    let mut served_by_w2 = accept_all(&l2);
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Progress::Again(d) = step(&mut w1, Some(&mut hand)) {
        assert!(Instant::now() < deadline, "the retire never finished");
        std::thread::sleep(d);
    }
    drop(l1);
    std::thread::sleep(Duration::from_millis(20));
    served_by_w2 += accept_all(&l2);
    let handed = taken.len();
    assert!(handed > 0, "w1's queue was handed over");
    assert_eq!(handed + served_by_w2, clients.len() + late.len(), "every connection reached a worker");
}

#[test]
fn a_handed_over_program_does_not_turn_steering_off() {
    if !root_or_skip("a_handed_over_program_does_not_turn_steering_off") {
        return;
    }
    // A set without steering holds a plain migration program...
    let (plain, _) = master(Strategy::Bpf, None);
    assert_eq!(plain.steered(0), Some(false));
    let prog = plain.program_fd().expect("the migration program");
    // ...which another set is handed (as across an upgrade's exec): it still steers.
    let mut next = Set::new();
    next.add_spec("127.0.0.1:0").unwrap();
    next.use_program(prog).unwrap();
    next.master_open().unwrap();
    assert_eq!(next.steered(0), Some(true), "steering is decided by the threshold, not by the program");
    // With steering off it uses the program it was handed.
    let mut off = Set::new();
    off.add_spec("127.0.0.1:0").unwrap();
    off.set_steering(false).unwrap();
    off.inherit(&plain).unwrap();
    off.master_open().unwrap();
    assert_eq!(off.steered(0), Some(false));
    assert!(off.program_fd().is_some());
    // A health threshold of 0 drops the verdicts, not the steering: leaving sockets
    // still get no new connections.
    let mut unjudged = Set::new();
    unjudged.add_spec("127.0.0.1:0").unwrap();
    unjudged.set_health_threshold(Duration::ZERO);
    unjudged.master_open().unwrap();
    assert_eq!(unjudged.steered(0), Some(true));
    assert_eq!(unjudged.watch(), Some(Duration::from_secs(1)), "housekeeping once a second");
}

#[test]
fn a_reload_set_shares_the_steering_of_the_addresses_both_have() {
    if !root_or_skip("a_reload_set_shares_the_steering_of_the_addresses_both_have") {
        return;
    }
    let (mut old, addr) = master(Strategy::Auto, Some(Duration::from_millis(50)));
    let _w = worker(&old, addr);
    old.release().unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut new = Set::new();
    new.add_spec(&addr.to_string()).unwrap();
    new.add_spec(&other.to_string()).unwrap();
    new.inherit(&old).unwrap();
    drop(old); // the order of free and open does not matter any more
    new.master_open().unwrap();
    assert_eq!(new.slots(0).unwrap().len(), 1, "the old worker's slot is in the new set's table");
    assert_eq!(new.slots(1).unwrap().len(), 0, "a new address gets its own table");
}

#[test]
fn a_worker_waits_in_the_choice_until_its_successor_is_eligible() {
    if !root_or_skip("a_worker_waits_in_the_choice_until_its_successor_is_eligible") {
        return;
    }
    let (mut old, addr) = master(Strategy::Bpf, Some(Duration::from_millis(50)));
    let mut w1 = worker(&old, addr);
    old.release().unwrap();
    // A reload: the new set opens (a successor is coming) but no new worker runs yet.
    let new = reload(&old, addr);
    let state = |s: &Set| s.slots(0).unwrap().iter().map(|x| x.state).collect::<Vec<_>>();
    assert!(matches!(step(&mut w1, None), Progress::Again(d) if d <= Duration::from_millis(2)));
    assert_eq!(state(&new), vec![SlotState::Healthy], "still in the choice: nobody else could take its connections");
    // The new generation's worker is in: the old one leaves the choice, then closes.
    let w2 = worker(&new, addr);
    let Progress::Again(gap) = step(&mut w1, None) else { panic!("it leaves the choice before closing") };
    // Without a taker nobody accepts what waits on its socket until the close: the gap
    // before it (for handshakes in flight) is short.
    assert!(gap <= Duration::from_millis(2), "{gap:?}");
    assert!(state(&new).contains(&SlotState::Retiring), "{:?}", state(&new));
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Progress::Again(d) = step(&mut w1, None) {
        assert!(Instant::now() < deadline, "the retire never finished");
        std::thread::sleep(d);
    }
    assert_eq!(state(&new), vec![SlotState::Healthy], "only the successor's slot is left");
    drop(w2);
}

#[test]
fn a_reload_keeps_the_old_workers_in_the_choice_until_enough_new_ones_are_eligible() {
    if !root_or_skip("a_reload_keeps_the_old_workers_in_the_choice_until_enough_new_ones_are_eligible") {
        return;
    }
    let (mut old, addr) = master(Strategy::Bpf, Some(Duration::from_millis(50)));
    let mut w1 = worker(&old, addr);
    let w2 = worker(&old, addr);
    old.release().unwrap();
    w1.heartbeat();
    w2.heartbeat();
    // A reload: a newer generation of three, one of them beating so far.
    let mut new = reload(&old, addr);
    let (n1, n2, n3) = (worker(&new, addr), worker(&new, addr), worker(&new, addr));
    new.release().unwrap();
    n1.heartbeat();
    // One new worker eligible against two old ones in the choice, two more starting: the
    // old worker stays in the choice (and serves) rather than piling every connection on n1.
    for _ in 0..3 {
        assert!(matches!(step(&mut w1, None), Progress::Again(d) if d <= Duration::from_millis(2)));
        assert_eq!(retiring(&new), 0, "left the choice with one successor of three eligible");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (l1, ln1) = (listener_of(&w1), listener_of(&n1));
    let clients: Vec<TcpStream> = (0..60).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(20));
    assert!(accept_all(&l1) > 0, "a worker waiting for its successors still gets connections");
    accept_all(&ln1);
    // As many new workers eligible as old ones in the choice: it leaves, though n3 is not in.
    n2.heartbeat();
    assert!(matches!(step(&mut w1, None), Progress::Again(_)));
    assert_eq!(retiring(&new), 1, "two successors eligible for two old workers: it leaves the choice");
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Progress::Again(d) = step(&mut w1, None) {
        assert!(Instant::now() < deadline, "the retire never finished");
        std::thread::sleep(d);
    }
    drop((clients, w2, n1, n2, n3));
}

#[test]
fn a_reload_to_fewer_workers_lets_the_old_ones_leave_once_all_new_ones_are_in() {
    if !root_or_skip("a_reload_to_fewer_workers_lets_the_old_ones_leave_once_all_new_ones_are_in") {
        return;
    }
    let (mut old, addr) = master(Strategy::Bpf, Some(Duration::from_millis(50)));
    let mut w1 = worker(&old, addr);
    let w2 = worker(&old, addr);
    let w3 = worker(&old, addr);
    old.release().unwrap();
    for w in [&w1, &w2, &w3] {
        w.heartbeat();
    }
    let mut new = reload(&old, addr);
    // The new generation is opened, none of its workers is in yet: wait.
    assert!(matches!(step(&mut w1, None), Progress::Again(d) if d <= Duration::from_millis(2)));
    assert_eq!(retiring(&new), 0);
    // Its only worker: one eligible for three old ones, and nobody else starting.
    let n1 = worker(&new, addr);
    new.release().unwrap();
    assert!(matches!(step(&mut w1, None), Progress::Again(d) if d <= Duration::from_millis(2)));
    assert_eq!(retiring(&new), 0, "its one successor has not beaten yet");
    n1.heartbeat();
    assert!(matches!(step(&mut w1, None), Progress::Again(_)));
    assert_eq!(retiring(&new), 1, "the whole new generation is in: it leaves the choice");
    drop((w2, w3, n1));
}
