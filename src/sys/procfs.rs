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
