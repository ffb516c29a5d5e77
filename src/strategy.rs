//! How a group keeps the connections queued on a leaving socket: the strategy a set asks
//! for, and the one each listener got, with the reason.
//!
//! - `Bpf`: the library's reuseport eBPF program (select-or-migrate) is attached to the
//!   group; the kernel migrates a closing listener's queue and half-open requests to a
//!   surviving member. Needs CAP_BPF to load, nothing to attach an inherited program.
//! - `Sysctl`: net.ipv4.tcp_migrate_req is 1 in this network namespace: the same
//!   migration, switched on system-wide by the administrator.
//! - `Drain`: neither is available; a retiring worker accepts what is queued until its
//!   queue stays empty, hands those connections to the server, then closes. Connections
//!   arriving in the instant of the close, or still in their handshake, may be reset.
//! - `None`: close and let the kernel reset the queue (for comparison).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// The eBPF program where it can be loaded or attached; else the sysctl when it is
    /// already 1; else drain.
    #[default]
    Auto,
    /// The library's reuseport eBPF program (select-or-migrate, Linux 5.14+): the kernel
    /// migrates a closing socket's queue and half-open connections to a survivor.
    Bpf,
    /// `net.ipv4.tcp_migrate_req=1` in this network namespace: the same migration, set by
    /// the administrator.
    Sysctl,
    /// No migration: a retiring worker accepts what is queued, then closes.
    Drain,
    /// Nothing: a closing socket's queue is reset. For comparison.
    None,
}

impl Strategy {
    /// Every strategy, in the order of the C API's values.
    pub const ALL: [Strategy; 5] = [Strategy::Auto, Strategy::Bpf, Strategy::Sysctl, Strategy::Drain, Strategy::None];

    /// Its name as a C string ("auto", "bpf", "sysctl", "drain", "none").
    pub fn name(self) -> &'static std::ffi::CStr {
        match self {
            Strategy::Auto => c"auto",
            Strategy::Bpf => c"bpf",
            Strategy::Sysctl => c"sysctl",
            Strategy::Drain => c"drain",
            Strategy::None => c"none",
        }
    }

    /// Its name ("auto", "bpf", "sysctl", "drain", "none").
    pub fn as_str(self) -> &'static str {
        self.name().to_str().expect("ASCII names")
    }

    /// Whether the kernel itself moves a closing listener's queue to a survivor.
    pub fn migrates(self) -> bool {
        matches!(self, Strategy::Bpf | Strategy::Sysctl)
    }

    /// The strategy of a name, for config files.
    pub fn parse(text: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The strategy a listener got, and why, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub(crate) strategy: Strategy,
    pub(crate) reason: String,
}

impl Applied {
    /// The strategy the group got: never [`Strategy::Auto`].
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Why, in words for the operator (and, for a lossy fallback, how to fix it).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// What `Auto` and the explicit choices resolve to, given what the eBPF attempt gave
/// (`Ok` or the errno) and the sysctl (None: this kernel has none). Pure, so every branch
/// is tested without privileges.
pub(crate) fn resolve(
    requested: Strategy,
    bpf: Result<(), i32>,
    sysctl: Option<i32>,
) -> Result<Applied, (i32, String)> {
    let bpf_why = |errno: i32| {
        match errno {
        libc::EPERM | libc::EACCES => "loading a reuseport eBPF program (bpf(BPF_PROG_LOAD)) needs CAP_BPF: this process lacks it (never given, or dropped since it started) or a seccomp filter denies bpf() (run the master as root with CAP_BPF, or hand it an inherited program fd)".to_string(),
        libc::EINVAL => "this kernel lacks the select-or-migrate attach type (Linux 5.14 or later)".to_string(),
        e => match crate::steering::bpf_creation_hint(e) {
            Some(hint) => format!("the eBPF program could not be loaded (bpf(BPF_PROG_LOAD)): {}: {hint}", crate::error::strerror(e)),
            None => format!("the eBPF program could not be loaded or attached: {}", crate::error::strerror(e)),
        },
    }
    };
    let sysctl_text = match sysctl {
        Some(v) => format!("net.ipv4.tcp_migrate_req is {v}"),
        None => "this kernel has no net.ipv4.tcp_migrate_req (Linux 5.14 or later)".to_string(),
    };
    let applied = |strategy, reason: String| Ok(Applied { strategy, reason });
    match requested {
        Strategy::Bpf => match bpf {
            Ok(()) => applied(Strategy::Bpf, "the reuseport eBPF program is attached: queued connections migrate".into()),
            Err(e) => Err((e, bpf_why(e))),
        },
        Strategy::Sysctl => match sysctl {
            Some(1) => applied(Strategy::Sysctl, "net.ipv4.tcp_migrate_req is 1: queued connections migrate".into()),
            _ => Err((libc::EOPNOTSUPP, format!("{sysctl_text}: set it to 1 in this network namespace, or use the bpf strategy"))),
        },
        Strategy::Drain => applied(Strategy::Drain, "asked for: a retiring worker drains its queue before closing".into()),
        Strategy::None => applied(Strategy::None, "asked for: a closing listener resets its queue".into()),
        Strategy::Auto => match (bpf, sysctl) {
            (Ok(()), _) => applied(Strategy::Bpf, "the reuseport eBPF program is attached: queued connections migrate".into()),
            (Err(_), Some(1)) => applied(Strategy::Sysctl, "net.ipv4.tcp_migrate_req is 1: queued connections migrate".into()),
            (Err(e), _) => applied(
                Strategy::Drain,
                format!(
                    "no migration ({}; {sysctl_text}): a retiring worker drains its queue, but connections arriving as it closes may be reset; to fix, {} or set net.ipv4.tcp_migrate_req=1",
                    bpf_why(e),
                    "run the master with CAP_BPF"
                ),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_bpf_then_sysctl_then_drain() {
        assert_eq!(resolve(Strategy::Auto, Ok(()), Some(0)).unwrap().strategy, Strategy::Bpf);
        assert_eq!(resolve(Strategy::Auto, Err(libc::EPERM), Some(1)).unwrap().strategy, Strategy::Sysctl);
        let d = resolve(Strategy::Auto, Err(libc::EPERM), Some(0)).unwrap();
        assert_eq!(d.strategy, Strategy::Drain);
        assert!(d.reason.contains("CAP_BPF") && d.reason.contains("tcp_migrate_req=1"), "{}", d.reason);
        let (errno, why) = resolve(Strategy::Bpf, Err(libc::ENOMEM), Some(0)).unwrap_err();
        assert_eq!(errno, libc::ENOMEM);
        assert!(why.contains("BPF_PROG_LOAD") && why.contains("memory cgroup"), "{why}");
        let old = resolve(Strategy::Auto, Err(libc::EINVAL), None).unwrap();
        assert_eq!(old.strategy, Strategy::Drain);
        assert!(old.reason.contains("5.14"), "{}", old.reason);
    }

    #[test]
    fn explicit_choices_fail_with_the_fix() {
        let (errno, why) = resolve(Strategy::Bpf, Err(libc::EPERM), Some(1)).unwrap_err();
        assert_eq!(errno, libc::EPERM);
        assert!(why.contains("CAP_BPF"), "{why}");
        let (errno, why) = resolve(Strategy::Sysctl, Ok(()), Some(0)).unwrap_err();
        assert_eq!(errno, libc::EOPNOTSUPP);
        assert!(why.contains("tcp_migrate_req is 0"), "{why}");
        assert_eq!(resolve(Strategy::Sysctl, Err(libc::EPERM), Some(1)).unwrap().strategy, Strategy::Sysctl);
        assert_eq!(resolve(Strategy::Drain, Ok(()), Some(1)).unwrap().strategy, Strategy::Drain);
        assert_eq!(resolve(Strategy::None, Ok(()), Some(1)).unwrap().strategy, Strategy::None);
    }

    #[test]
    fn names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
        }
        assert_eq!(Strategy::parse("bogus"), None);
        assert!(Strategy::Bpf.migrates() && Strategy::Sysctl.migrates());
        assert!(!Strategy::Drain.migrates() && !Strategy::None.migrates());
    }
}
