//! The lifecycle through the Rust API, in one process: every socket here is on loopback
//! with a kernel-chosen port, so the tests need no privileges. Forks, privilege drops and
//! namespaces are covered by the C tests (tests/c).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd};

use reuseport::{Role, Set};

fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: an int option read into an int.
    let rc =
        unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, &mut v as *mut i32 as *mut libc::c_void, &mut len) };
    assert_eq!(rc, 0, "getsockopt({level}, {name}) on fd {fd:?}");
    v
}

fn raw(set: &Set, i: usize) -> Option<i32> {
    set.fd(i).map(|fd| fd.as_raw_fd())
}

fn bound_addr(set: &Set, i: usize) -> SocketAddr {
    let fd = set.fd(i).expect("held");
    socket2::SockRef::from(&fd).local_addr().unwrap().as_socket().unwrap()
}

#[test]
fn port_zero_is_chosen_once_and_joined_by_workers() {
    let mut master = Set::new();
    master.add_spec("127.0.0.1:0").unwrap();
    master.master_open().unwrap();
    let port = bound_addr(&master, 0).port();
    assert_ne!(port, 0);
    assert_eq!(master.listeners()[0].spec_text(), format!("127.0.0.1:{port}"));

    // A worker's set carries the resolved port (as a forked copy would).
    let mut worker = Set::new();
    worker.add_spec(&master.listeners()[0].spec_text()).unwrap();
    worker.worker_bind().unwrap();
    assert_eq!(worker.role(), Role::Bound);
    assert_eq!(bound_addr(&worker, 0).port(), port);
    assert_ne!(raw(&worker, 0), raw(&master, 0));

    // The master leaves; the group lives on in the worker and still accepts.
    master.release().unwrap();
    assert!(master.fd(0).is_none());
    assert_eq!(master.role(), Role::Released);
    assert_eq!(master.listeners()[0].addr().port(), port, "release keeps the resolved port");
    TcpStream::connect(("127.0.0.1", port)).expect("the worker's socket accepts");

    // Reload: the master opens again on the same port, joining the worker's group.
    master.master_open().unwrap();
    assert_eq!(bound_addr(&master, 0).port(), port);
}

#[test]
fn workers_cannot_bind_an_unresolved_port_zero() {
    let mut set = Set::new();
    set.add_spec("127.0.0.1:0").unwrap();
    let e = set.worker_bind().unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.message().contains("port 0 is not resolved"), "{}", e.message());
}

#[test]
fn master_socket_is_unconfigured_and_single_mode_configures() {
    let spec = "127.0.0.1:0 rcvbuf=256k deferred fastopen=8 so_keepalive=60:5:3";
    let mut master = Set::new();
    master.add_spec(spec).unwrap();
    master.master_open().unwrap();
    let fd = master.fd(0).unwrap();
    assert_eq!(getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT), 0);
    assert_eq!(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
    assert_eq!(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT), 1);
    assert_ne!(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF), 2 * 256 * 1024);

    let mut single = Set::new();
    single.add_spec(spec).unwrap();
    single.open_single().unwrap();
    assert_eq!(single.role(), Role::Single);
    let fd = single.fd(0).unwrap();
    assert!(getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT) > 0);
    assert_eq!(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
    assert_eq!(getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 60);
    assert_eq!(getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 5);
    assert_eq!(getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
    assert_eq!(getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_FASTOPEN), 8);
    // The kernel doubles SO_RCVBUF for its bookkeeping.
    assert_eq!(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF), 2 * 256 * 1024);
    // SAFETY: fcntl F_GETFD on a held fd.
    assert_ne!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC, 0);
}

#[test]
fn ipv6_only_is_on_by_default_and_can_be_turned_off() {
    let mut set = Set::new();
    set.add_spec("[::1]:0").unwrap();
    set.add_spec("[::]:0 ipv6only=off").unwrap();
    set.open_single().unwrap();
    assert_eq!(getsockopt_int(set.fd(0).unwrap(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY), 1);
    assert_eq!(getsockopt_int(set.fd(1).unwrap(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY), 0);
}

/// A port nobody holds right now (the kernel's choice, released at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_port_held_without_reuseport_is_named_and_nothing_leaks() {
    let blocker = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blocker.local_addr().unwrap().port();
    let first = free_port();
    let mut set = Set::new();
    set.add_spec(&format!("127.0.0.1:{first}")).unwrap();
    set.add_spec(&format!("127.0.0.1:{port}")).unwrap();
    let e = set.master_open().unwrap_err();
    assert_eq!(e.errno(), libc::EADDRINUSE);
    assert!(e.message().starts_with(&format!("127.0.0.1:{port}: bind: ")), "{}", e.message());
    assert!(e.message().contains("without SO_REUSEPORT"), "{}", e.message());
    assert_eq!(set.role(), Role::Empty);
    // Had the first listener's socket leaked, a plain bind of its port would fail.
    TcpListener::bind(("127.0.0.1", first)).expect("the first listener's socket was closed");

    drop(blocker);
    set.master_open().unwrap();
    assert_eq!(set.role(), Role::MasterOpen);
}

#[test]
fn lifecycle_order_is_enforced() {
    let mut set = Set::new();
    assert_eq!(set.release().unwrap_err().errno(), libc::EINVAL);
    assert_eq!(set.adopt().unwrap_err().errno(), libc::EINVAL);
    assert_eq!(set.master_open().unwrap_err().errno(), libc::EINVAL, "no specs");
    set.add_spec("127.0.0.1:0").unwrap();
    set.master_open().unwrap();
    let e = set.adopt().unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.message().contains("in the master that opened"), "{}", e.message());
    assert_eq!(set.master_open().unwrap_err().errno(), libc::EALREADY);
    assert_eq!(set.worker_bind().unwrap_err().errno(), libc::EALREADY);
    assert_eq!(set.add_spec("127.0.0.1:0").unwrap_err().errno(), libc::EALREADY);
    set.release().unwrap();
    let e = set.release().unwrap_err();
    assert_eq!(e.errno(), libc::EALREADY);
    assert!(e.message().contains("called twice"), "{}", e.message());
}

#[test]
fn a_host_name_adds_every_address_it_resolves_to() {
    let mut set = Set::new();
    let n = set.add_spec("localhost:0").unwrap();
    assert!(n >= 1);
    assert_eq!(set.listeners().len(), n);
    assert!(set.listeners().iter().all(|l| l.addr().ip().is_loopback()));
    let dup = set.add_spec("127.0.0.1:0");
    assert!(dup.is_ok(), "port 0 entries are distinct groups");
    set.open_single().unwrap();
    for i in 0..set.listeners().len() {
        let a = bound_addr(&set, i);
        TcpStream::connect(a).unwrap_or_else(|e| panic!("connect {a}: {e}"));
    }
}

#[test]
fn the_same_address_twice_is_refused() {
    let mut set = Set::new();
    set.add_spec("127.0.0.1:8080").unwrap();
    let e = set.add_spec("127.0.0.1:8080 backlog=10").unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.message().contains("already in the set"), "{}", e.message());
}
