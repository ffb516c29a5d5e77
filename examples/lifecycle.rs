//! The lifecycle through the Rust API, with real processes: a master opens the listen
//! socket, forks three workers and releases its copy after the first; the first worker
//! adopts the master's socket, the others bind their own into the same group; they serve
//! the master's connections (the kernel spreads them) until it tells them to stop, then
//! retire.
//!
//! `cargo run --example lifecycle` (any user: port 0 on loopback; as root the groups get
//! the library's eBPF migration program, else the strategy falls back, and says why).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::accept;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, ForkResult};
use reuseport::{Progress, Role, Set};

const WORKERS: usize = 3;

/// Prints the library's messages (target "reuseport") with the process id.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("[{}] {} {}: {}", std::process::id(), record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn main() -> ExitCode {
    log::set_logger(&LOGGER).expect("the first logger");
    log::set_max_level(log::LevelFilter::Info);
    match master() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lifecycle: {e}");
            ExitCode::FAILURE
        }
    }
}

fn master() -> Result<bool, Box<dyn std::error::Error>> {
    let mut set = Set::new();
    set.add_spec("127.0.0.1:0 backlog=128")?; // the kernel chooses the port, once
    set.master_open()?; // socket, SO_REUSEPORT, bind, listen: before forking
    let addr = set.listeners()[0].addr();
    println!("master {}: {}", std::process::id(), set.listeners()[0].spec_text());

    // The workers serve until this pipe closes.
    let (stop_rx, stop_tx) = pipe()?;
    let mut children = Vec::new();
    for w in 0..WORKERS {
        // SAFETY: this program is single-threaded, so the child may run any code.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(stop_tx);
                std::process::exit(match worker(set, w, stop_rx) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("worker {w}: {e}");
                        1
                    }
                })
            }
            ForkResult::Parent { child } => children.push(child),
        }
        if w == 0 {
            // Right after forking the first worker: it holds the group from now on.
            set.release()?;
            assert_eq!(set.role(), Role::Released);
        }
    }
    drop(stop_rx);

    // New connections, spread by the kernel over the workers' sockets.
    for _ in 0..2 * WORKERS {
        let mut reply = String::new();
        TcpStream::connect(addr)?.read_to_string(&mut reply)?;
        println!("master: {addr} answered by {reply}");
    }
    drop(stop_tx);
    let mut ok = true;
    for child in children {
        ok &= matches!(waitpid(child, None)?, WaitStatus::Exited(_, 0));
    }
    Ok(ok)
}

/// A worker: takes its socket (the first adopts the master's, the others bind their own,
/// before dropping privileges), serves until `stop` closes, and retires.
fn worker(mut set: Set, w: usize, stop: OwnedFd) -> Result<(), Box<dyn std::error::Error>> {
    if w == 0 {
        set.adopt()?;
    } else {
        set.worker_bind()?;
    }
    // Drop privileges here (setgid, setuid): the socket is already in the group.
    let applied = set.listeners()[0].applied().expect("opened");
    println!("worker {} ({:?}): strategy {}", std::process::id(), set.role(), applied.strategy());

    loop {
        let listen_fd = set.fd(0).expect("held");
        let mut fds = [PollFd::new(listen_fd, PollFlags::POLLIN), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::NONE)?;
        if fds[1].any().unwrap_or(true) {
            break; // the master closed the pipe
        }
        // The set's socket is non-blocking: another worker may have taken the connection.
        match accept(listen_fd.as_raw_fd()) {
            Ok(conn) => {
                // SAFETY: accept returned a new fd, ours alone.
                let mut conn = TcpStream::from(unsafe { OwnedFd::from_raw_fd(conn) });
                conn.set_nonblocking(false)?;
                write!(conn, "worker {}", std::process::id())?;
            }
            Err(Errno::EAGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }

    // Leaving: with migration the kernel moves what is queued to the siblings; with drain
    // each queued connection comes to the closure (None: served; Some: refused, closed).
    // A retire never blocks: an event loop would serve its connections until `wait` is
    // over; this example has none left, so it sleeps.
    let mut serve = |_conn, _index| None;
    while let Progress::Again(wait) = set.retire(Some(&mut serve))? {
        std::thread::sleep(wait);
    }
    Ok(())
}
