//! reuseport_probe(): what this kernel and process can do.

use std::ffi::{c_char, c_int};

use super::abi::{check_out_size, write_out, write_text};
use super::guard;
use crate::error::Error;
use crate::probe;

/// What reuseport_probe() found. The struct may grow at its end: the caller passes its
/// sizeof (see the ABI rules at the top).
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
    /// uname -r, NUL-terminated (the size of struct utsname's field).
    pub kernel_release: [c_char; 65],
}

/// The struct's size in the first release (0.1): `size` may not be smaller.
pub const REUSEPORT_PROBE_INFO_SIZE_V1: usize = 100;
const _: () = assert!(std::mem::size_of::<reuseport_probe_info>() >= REUSEPORT_PROBE_INFO_SIZE_V1);

fn copy_cstr(dst: &mut [c_char], src: &str) {
    let n = src.len().min(dst.len() - 1);
    for (d, s) in dst.iter_mut().zip(src.bytes().take(n)) {
        *d = s as c_char;
    }
    dst[n] = 0;
}

/// Fills `out` (`size` bytes: pass `sizeof *out`) with what this kernel and process can
/// do, and writes into `notes` (`notes_len` bytes; NULL with 0 for none) why the default
/// strategy is what it is, then what is missing and how to get it, one line each, like
/// snprintf(): always NUL-terminated when `notes_len` > 0, cut to fit. Returns the full
/// length of the notes (excluding the NUL: a result >= `notes_len` means they were cut),
/// or -EINVAL for NULL `out` or a `size` below the first release's.
///
/// Opens one socket and may load (and at once close) an eBPF program; holds nothing
/// afterwards. Who: anyone, any time (the master at startup, to log what it will get).
#[no_mangle]
pub extern "C" fn reuseport_probe(
    out: *mut reuseport_probe_info,
    size: usize,
    notes: *mut c_char,
    notes_len: usize,
) -> c_int {
    guard("reuseport_probe", || {
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        check_out_size(size, REUSEPORT_PROBE_INFO_SIZE_V1, "size")?;
        if notes.is_null() && notes_len > 0 {
            return Err(Error::invalid("notes is NULL but notes_len is not 0"));
        }
        let p = probe::probe();
        let mut info = reuseport_probe_info {
            so_reuseport: p.so_reuseport() as c_int,
            tcp_migrate_req: p.tcp_migrate_req().unwrap_or(-1),
            bpf_reuseport: p.bpf_reuseport().is_ok() as c_int,
            bpf_errno: p.bpf_reuseport().err().unwrap_or(0),
            auto_strategy: super::strategy::strategy_code(p.auto().strategy()),
            steering: p.steering().is_ok() as c_int,
            steering_errno: p.steering().err().unwrap_or(0),
            rescue: p.rescue() as c_int,
            kernel_release: [0; 65],
        };
        copy_cstr(&mut info.kernel_release, p.kernel_release());
        // SAFETY: out has size writable bytes (the caller's contract), size >= V1 (checked).
        unsafe { write_out(out as *mut u8, size, &info) };
        let mut lines = vec![format!("strategy auto -> {}: {}", p.auto().strategy(), p.auto().reason())];
        lines.extend(p.notes().iter().cloned());
        // SAFETY: NULL with 0, or notes_len writable bytes (the caller's contract).
        unsafe { write_text(notes, notes_len, &lines.join("\n")) }
    })
}
