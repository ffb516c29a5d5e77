//! reuseport_probe(): what this kernel and process can do.

use std::ffi::{c_char, c_int};

use super::guard;
use crate::error::Error;
use crate::probe;

/// What reuseport_probe() found.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct reuseport_probe_info {
    /// 1 when a TCP socket accepts SO_REUSEPORT.
    pub so_reuseport: c_int,
    /// net.ipv4.tcp_migrate_req in this network namespace (1: the kernel migrates the queue
    /// of a closing listener), or -1 when this kernel has no such sysctl.
    pub tcp_migrate_req: c_int,
    /// 1 when this process could load a reuseport eBPF program with the select-or-migrate
    /// attach type (needs CAP_BPF and Linux 5.14+).
    pub bpf_reuseport: c_int,
    /// The errno of that load attempt when bpf_reuseport is 0 (EPERM: not privileged).
    pub bpf_errno: c_int,
    /// The strategy the default (REUSEPORT_STRATEGY_AUTO) would give a group this process
    /// opens: a reuseport_strategy value, never AUTO.
    pub auto_strategy: c_int,
    /// 1 when this process can create the steering program and maps: the groups it opens
    /// as a master steer new connections around stalled workers (reuseport_watch()).
    pub steering: c_int,
    /// The errno of that attempt when steering is 0.
    pub steering_errno: c_int,
    /// 1 when this process may move a stalled worker's queued connections to its siblings
    /// (CAP_SYS_PTRACE, e.g. root).
    pub rescue: c_int,
    /// uname -r, NUL-terminated.
    pub kernel_release: [c_char; 65],
    /// Why the default strategy is what it is, then what is missing and how to get it,
    /// one line each, NUL-terminated (cut at 1023 bytes).
    pub notes: [c_char; 1024],
}

fn copy_cstr(dst: &mut [c_char], src: &str) {
    let n = src.len().min(dst.len() - 1);
    for (d, s) in dst.iter_mut().zip(src.bytes().take(n)) {
        *d = s as c_char;
    }
    dst[n] = 0;
}

/// Fills `out` with what this kernel and process can do. Opens one socket and may load
/// (and at once close) an eBPF program; holds nothing afterwards. Returns 0, or -EINVAL
/// for NULL. Who: anyone, any time (the master at startup, to log what it will get).
#[no_mangle]
pub extern "C" fn reuseport_probe(out: *mut reuseport_probe_info) -> c_int {
    guard("reuseport_probe", || {
        // SAFETY: NULL or a pointer to writable memory of the struct's size.
        let out = unsafe { out.as_mut() }.ok_or_else(|| Error::invalid("out is NULL"))?;
        let p = probe::probe();
        out.so_reuseport = p.so_reuseport as c_int;
        out.tcp_migrate_req = p.tcp_migrate_req.unwrap_or(-1);
        out.bpf_reuseport = p.bpf_reuseport.is_ok() as c_int;
        out.bpf_errno = p.bpf_reuseport.err().unwrap_or(0);
        out.auto_strategy = super::strategy::strategy_code(p.auto.strategy);
        out.steering = p.steering.is_ok() as c_int;
        out.steering_errno = p.steering.err().unwrap_or(0);
        out.rescue = p.rescue as c_int;
        copy_cstr(&mut out.kernel_release, &p.kernel_release);
        let mut lines = vec![format!("strategy auto -> {}: {}", p.auto.strategy, p.auto.reason)];
        lines.extend(p.notes.iter().cloned());
        copy_cstr(&mut out.notes, &lines.join("\n"));
        Ok(0)
    })
}
