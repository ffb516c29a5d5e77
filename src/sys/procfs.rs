//! What the library reads from /proc and from the process table: sysctls, capabilities,
//! whether a process lives, and the monotonic clock shared by every process of a host.

use std::fs;
use std::io;

/// net.ipv4.tcp_migrate_req in this network namespace; None when this kernel has none
/// (before 5.14) or it cannot be read.
pub(crate) fn tcp_migrate_req() -> Option<i32> {
    fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").ok().and_then(|s| s.trim().parse().ok())
}

/// The first port a process without CAP_NET_BIND_SERVICE may bind.
pub(crate) fn unprivileged_port_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Whether capability number `cap` is in this process's effective set.
pub(crate) fn has_capability(cap: u32) -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// Whether process `pid` exists (another user's process counts: EPERM means it is there).
pub(crate) fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid != 0
        && (unsafe { libc::kill(pid as i32, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Whether process `pid` sleeps in its event loop's wait (epoll_wait, poll, select,
/// io_uring): it waits for events and has none. The watch asks this of a worker it marked
/// stalled whose queue is empty: a healthy worker that was only starved of CPU for the
/// threshold, and whose queue the rescue then moved away, sleeps there with nothing to
/// wake it (no connection is sent to a stalled slot, and an idle loop has no timer), so
/// it would never beat again. A stopped worker (state T), one running, or one asleep
/// anywhere else (a blocking read, nanosleep, a lock) does not count. When /proc/PID/wchan
/// says nothing (it reads "0" without ptrace access to the process, or when the kernel
/// has no symbols), a sleeping worker counts: the watch's back-off bounds the cost of a
/// wrong guess (verdict.rs).
pub(crate) fn waits_for_events(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    if !sleeps(&stat) {
        return false;
    }
    let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).ok();
    sleeps_waiting_for_events(&stat, wchan.as_deref())
}

/// Whether /proc/PID/stat's state is S (interruptible sleep). The state follows the
/// command's closing parenthesis (a command may hold spaces and parentheses of its own).
fn sleeps(stat: &str) -> bool {
    stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) == Some("S")
}

/// waits_for_events() on the text of /proc/PID/stat and /proc/PID/wchan.
fn sleeps_waiting_for_events(stat: &str, wchan: Option<&str>) -> bool {
    if !sleeps(stat) {
        return false;
    }
    match wchan.map(str::trim) {
        None | Some("" | "0") => true,
        // A compiler's suffix (".constprop.0", ".isra.0") is not part of the name.
        Some(w) => EVENT_WAITS.contains(&w.split('.').next().unwrap_or(w)),
    }
}

/// Where a task waiting for events sleeps, as /proc/PID/wchan names it: epoll_wait()
/// (`do_epoll_wait` on Linux 6.x, `ep_poll` before), poll() and select()
/// (`poll_schedule_timeout`), io_uring's wait for completions (`io_cqring_wait`).
const EVENT_WAITS: &[&str] = &["do_epoll_wait", "ep_poll", "poll_schedule_timeout", "io_cqring_wait"];

/// CLOCK_MONOTONIC in milliseconds: comparable across the processes of one boot, unlike
/// std's Instant, which cannot be stored in shared memory.
pub(crate) fn monotonic_ms() -> u64 {
    monotonic_ns() / 1_000_000
}

/// CLOCK_MONOTONIC in nanoseconds.
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The kernel's CLOCK_MONOTONIC_COARSE in nanoseconds (the last jiffy's): the clock of
/// the program's bpf_ktime_get_coarse_ns(), and cheap enough for a heartbeat. In a time
/// namespace clock_gettime() is offset and the program's helper is not, so the
/// namespace's offset (timens_offsets) is taken off.
pub(crate) fn kernel_monotonic_coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE).wrapping_add_signed(-timens_monotonic_offset_ns())
}

/// This process's time namespace's CLOCK_MONOTONIC offset, in nanoseconds (0 outside one,
/// or without CONFIG_TIME_NS). Read once per process: a namespace's offsets are fixed once
/// a process is in it (a child forked after unshare(CLONE_NEWTIME) reads its own).
fn timens_monotonic_offset_ns() -> i64 {
    use std::sync::atomic::{AtomicI64, AtomicU32, Ordering::Relaxed};
    static READ_BY: AtomicU32 = AtomicU32::new(0);
    static OFFSET: AtomicI64 = AtomicI64::new(0);
    let me = std::process::id();
    if READ_BY.load(Relaxed) != me {
        OFFSET.store(read_timens_monotonic_offset().unwrap_or(0), Relaxed);
        READ_BY.store(me, Relaxed);
    }
    OFFSET.load(Relaxed)
}

fn read_timens_monotonic_offset() -> Option<i64> {
    parse_timens_monotonic(&std::fs::read_to_string("/proc/self/timens_offsets").ok()?)
}

/// The monotonic line of timens_offsets ("monotonic <secs> <nanosecs>").
fn parse_timens_monotonic(text: &str) -> Option<i64> {
    let line = text.lines().find(|l| l.split_whitespace().next() == Some("monotonic"))?;
    let mut f = line.split_whitespace().skip(1);
    let secs: i64 = f.next()?.parse().ok()?;
    let nanos: i64 = f.next()?.parse().ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod wait_tests {
    use super::*;

    const STAT: &str = "4242 (nginx: worker (x)) S 4241 4241 4241 0 -1 4194624 90 0 0 0";

    #[test]
    fn a_worker_asleep_in_its_event_wait_waits_for_events() {
        for w in ["do_epoll_wait", "ep_poll", "poll_schedule_timeout.constprop.0", "io_cqring_wait\n"] {
            assert!(sleeps_waiting_for_events(STAT, Some(w)), "{w}");
        }
        // No word on where it sleeps (no ptrace access, no symbols): a sleeper counts.
        assert!(sleeps_waiting_for_events(STAT, Some("0")));
        assert!(sleeps_waiting_for_events(STAT, None));
    }

    #[test]
    fn stopped_running_or_asleep_elsewhere_does_not() {
        for w in ["hrtimer_nanosleep", "futex_wait_queue", "pipe_read", "do_signal_stop"] {
            assert!(!sleeps_waiting_for_events(STAT, Some(w)), "{w}");
        }
        for state in ["T", "t", "R", "D", "Z"] {
            let stat = STAT.replace(") S ", &format!(") {state} "));
            assert!(!sleeps_waiting_for_events(&stat, Some("do_epoll_wait")), "{state}");
        }
        assert!(!sleeps_waiting_for_events("garbage", Some("do_epoll_wait")));
    }

    /// On this kernel: a child in epoll_wait() waits for events; stopped, it does not;
    /// one in nanosleep() does not either.
    #[test]
    fn real_processes_are_told_apart() {
        use std::time::{Duration, Instant};
        fn child(f: fn()) -> u32 {
            // SAFETY: the child only makes system calls, then _exit()s.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                // Other tests' sockets, inherited, would outlive their close in the parent.
                // SAFETY: closes this child's copies of fds 3 and up; nothing here uses them.
                unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
                f();
                // SAFETY: the child ends without running the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            pid as u32
        }
        fn settle(pid: u32, want: bool) -> bool {
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if waits_for_events(pid) == want {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        }
        fn poll_forever() {
            // SAFETY: system calls on fds the child makes, pointers to its stack.
            unsafe {
                let ep = libc::epoll_create1(0);
                let efd = libc::eventfd(0, 0);
                let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
                libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, efd, &mut ev);
                libc::epoll_wait(ep, &mut ev, 1, 10_000);
            }
        }
        fn poll_one() {
            // SAFETY: system calls on an fd the child makes, a pointer to its stack.
            unsafe {
                let mut p = libc::pollfd { fd: libc::eventfd(0, 0), events: libc::POLLIN, revents: 0 };
                libc::poll(&mut p, 1, 10_000);
            }
        }
        let polling = child(poll_forever);
        let polling_plain = child(poll_one);
        let sleeping = child(|| {
            // SAFETY: a plain system call.
            unsafe { libc::sleep(10) };
        });
        let waits = settle(polling, true);
        let plain_waits = settle(polling_plain, true);
        let wchan_says = fs::read_to_string(format!("/proc/{polling}/wchan")).is_ok_and(|w| w.trim() != "0");
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(polling as i32, libc::SIGSTOP) };
        let stopped_waits = !settle(polling, false);
        // A sleeper elsewhere never counts: looked at for a while.
        std::thread::sleep(Duration::from_millis(50));
        let sleeper_waits = waits_for_events(sleeping);
        for pid in [polling, polling_plain, sleeping] {
            // SAFETY: our own children, killed and reaped.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
                libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
            }
        }
        assert!(waits, "a child in epoll_wait() waits for events");
        assert!(!stopped_waits, "stopped, it does not");
        if !wchan_says {
            // Without wchan (no symbols, or no ptrace access) every sleeper counts.
            eprintln!("SKIP real_processes_are_told_apart, in part: /proc/PID/wchan reads 0 here");
            return;
        }
        assert!(plain_waits, "a child in poll() waits for events");
        assert!(!sleeper_waits, "one in sleep() does not");
    }
}

#[cfg(test)]
mod timens_tests {
    use super::*;

    #[test]
    fn the_monotonic_offset_is_read_from_timens_offsets() {
        let text = "monotonic     -35016         0\nboottime      -35016         0\n";
        assert_eq!(parse_timens_monotonic(text), Some(-35_016_000_000_000));
        let ahead = "monotonic   315360000  500\nboottime 0 0\n";
        assert_eq!(parse_timens_monotonic(ahead), Some(315_360_000_000_000_500));
        assert_eq!(parse_timens_monotonic("boottime 0 0\n"), None);
        // Outside a namespace the kernel's clock is the process's.
        let (ours, kernel) = (clock_ns(libc::CLOCK_MONOTONIC_COARSE), kernel_monotonic_coarse_ns());
        if read_timens_monotonic_offset().unwrap_or(0) == 0 {
            assert!(kernel.abs_diff(ours) < 100_000_000);
        }
    }
}
