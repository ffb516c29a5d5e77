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

/// CLOCK_MONOTONIC_COARSE in nanoseconds (the last jiffy's): the clock of the program's
/// bpf_ktime_get_coarse_ns(), and cheap enough for a heartbeat.
pub(crate) fn monotonic_coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
