//! What this kernel and this process can do, and why not. Read-only: it opens a socket and
//! may load (and at once close) the migration program, nothing else.

use crate::error::strerror;
use crate::steering;
use crate::strategy::{self, Applied, Strategy};
use crate::sys::{bpf, procfs};

/// What [`probe()`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// A TCP socket accepted SO_REUSEPORT.
    so_reuseport: bool,
    /// net.ipv4.tcp_migrate_req in this network namespace; None when unreadable (kernels
    /// before 5.14 do not have it).
    tcp_migrate_req: Option<i32>,
    /// Ok when a select-or-migrate reuseport program could be loaded by this process; else
    /// the errno of the attempt.
    bpf_reuseport: Result<(), i32>,
    kernel_release: String,
    /// Ok when this process could create the steering program and maps (health-aware
    /// steering for the groups it opens as a master); else the errno.
    steering: Result<(), i32>,
    /// Whether this process may move a stalled worker's queue (CAP_SYS_PTRACE).
    rescue: bool,
    /// What the default strategy (auto) would give a group opened by this process.
    auto: Applied,
    /// One line per capability that is missing, with what to do about it.
    notes: Vec<String>,
}

impl Probe {
    /// A TCP socket accepted SO_REUSEPORT.
    pub fn so_reuseport(&self) -> bool {
        self.so_reuseport
    }

    /// `net.ipv4.tcp_migrate_req` in this network namespace; `None` when this kernel has
    /// none (before 5.14).
    pub fn tcp_migrate_req(&self) -> Option<i32> {
        self.tcp_migrate_req
    }

    /// `Ok` when this process could load a select-or-migrate reuseport program; else the
    /// errno of the attempt (`EPERM`: no CAP_BPF).
    pub fn bpf_reuseport(&self) -> Result<(), i32> {
        self.bpf_reuseport
    }

    /// `uname -r`.
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    /// `Ok` when this process could create the steering program and maps (the groups it
    /// opens as a master are steered around stalled workers); else the errno.
    pub fn steering(&self) -> Result<(), i32> {
        self.steering
    }

    /// Whether this process may move a stalled worker's queue (CAP_SYS_PTRACE).
    pub fn rescue(&self) -> bool {
        self.rescue
    }

    /// What the default strategy ([`Strategy::Auto`]) would give a group this process opens.
    pub fn auto(&self) -> &Applied {
        &self.auto
    }

    /// One line per capability that is missing, with what to do about it.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

/// Finds what this kernel and this process can do. Opens one socket and may load (and at
/// once close) an eBPF program; holds nothing afterwards.
///
/// ```
/// let p = reuseport::probe();
/// println!("auto would give {}: {}", p.auto().strategy(), p.auto().reason());
/// for note in p.notes() {
///     println!("{note}");
/// }
/// ```
pub fn probe() -> Probe {
    let so_reuseport = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .and_then(|s| s.set_reuse_port(true))
        .is_ok();
    let tcp_migrate_req = procfs::tcp_migrate_req();
    let bpf_reuseport = bpf::load_migrate_program().map(drop).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
    let kernel_release =
        nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();

    let mut notes = Vec::new();
    if !so_reuseport {
        notes.push("SO_REUSEPORT is not available: Linux 3.9 or later is needed".to_string());
    }
    match tcp_migrate_req {
        None => notes.push("net.ipv4.tcp_migrate_req is missing: this kernel cannot migrate queued connections (Linux 5.14 or later)".to_string()),
        Some(0) => notes.push("net.ipv4.tcp_migrate_req is 0 in this network namespace: a closing listener resets its queue unless a reuseport eBPF program is attached".to_string()),
        Some(_) => {}
    }
    if let Err(errno) = bpf_reuseport {
        let hint = match errno {
            libc::EPERM | libc::EACCES => {
                "run the master with CAP_BPF (root), which may hand the program fd to unprivileged workers"
            }
            libc::EINVAL => "this kernel lacks the select-or-migrate attach type (Linux 5.14 or later)",
            libc::ENOSYS => "this kernel has no bpf(2)",
            _ => "",
        };
        notes.push(format!(
            "cannot load a reuseport eBPF program: {}{}{}",
            strerror(errno),
            if hint.is_empty() { "" } else { ": " },
            hint
        ));
    }
    let steering = steering::can_steer();
    let rescue = steering::can_rescue();
    if bpf_reuseport.is_ok() {
        if let Err(errno) = steering {
            notes.push(format!(
                "cannot create the steering program and maps: {}: stalled workers are not steered around",
                strerror(errno)
            ));
        } else if !rescue {
            notes.push("no CAP_SYS_PTRACE: a stalled worker is steered around, but what it had queued waits for it (run the master as root)".to_string());
        }
    }
    let auto = strategy::resolve(Strategy::Auto, bpf_reuseport, tcp_migrate_req).expect("auto always resolves");
    Probe { so_reuseport, tcp_migrate_req, bpf_reuseport, steering, rescue, kernel_release, auto, notes }
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_reads_this_kernel() {
        let p = super::probe();
        assert!(p.so_reuseport);
        assert!(!p.kernel_release.is_empty());
        assert_eq!(p.kernel_release, std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim());
        if nix::unistd::geteuid().is_root() {
            assert_eq!(p.bpf_reuseport, Ok(()), "root can load the program on Linux 5.14+: {:?}", p.notes);
            assert_eq!(p.auto.strategy, crate::strategy::Strategy::Bpf);
            assert_eq!(p.steering, Ok(()), "root can create the steering program: {:?}", p.notes);
            assert!(p.rescue, "root has CAP_SYS_PTRACE");
        }
    }
}
