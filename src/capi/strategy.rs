//! Choosing how a set's groups keep the connections queued on a leaving socket.

use std::ffi::{c_char, c_int};
use std::os::fd::AsRawFd;

use super::set::{reuseport_set, set_mut, set_ref};
use super::{guard, guard_query};
use crate::error::{Error, Step};
use crate::strategy::Strategy;

/// How a group keeps the connections queued on a socket that leaves it (a worker exiting
/// on reload, upgrade, quit or crash).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum reuseport_strategy {
    /// The default: the eBPF program where it can be loaded or attached, else the sysctl
    /// when it is already 1, else drain (with a warning naming the fix).
    REUSEPORT_STRATEGY_AUTO = 0,
    /// The library's reuseport eBPF program (select-or-migrate, Linux 5.14+): the kernel
    /// migrates a closing socket's queue and half-open connections to a survivor. Loading
    /// needs CAP_BPF; a program fd handed over with reuseport_set_set_program_fd() needs nothing.
    REUSEPORT_STRATEGY_BPF = 1,
    /// net.ipv4.tcp_migrate_req=1 in this network namespace: the same migration, set by
    /// the administrator. Opening fails with -EOPNOTSUPP when it is 0.
    REUSEPORT_STRATEGY_SYSCTL = 2,
    /// No migration: reuseport_retire() accepts what is queued until the queue stays
    /// empty, hands it to the server, then closes. Connections still in their handshake,
    /// and with `deferred` those whose client has sent no data yet, are lost.
    REUSEPORT_STRATEGY_DRAIN = 3,
    /// Nothing: a closing socket's queue is reset. For comparison.
    REUSEPORT_STRATEGY_NONE = 4,
}

impl From<reuseport_strategy> for Strategy {
    fn from(s: reuseport_strategy) -> Self {
        match s {
            reuseport_strategy::REUSEPORT_STRATEGY_AUTO => Strategy::Auto,
            reuseport_strategy::REUSEPORT_STRATEGY_BPF => Strategy::Bpf,
            reuseport_strategy::REUSEPORT_STRATEGY_SYSCTL => Strategy::Sysctl,
            reuseport_strategy::REUSEPORT_STRATEGY_DRAIN => Strategy::Drain,
            reuseport_strategy::REUSEPORT_STRATEGY_NONE => Strategy::None,
        }
    }
}

pub(crate) fn strategy_code(s: Strategy) -> c_int {
    Strategy::ALL.iter().position(|x| *x == s).expect("listed") as c_int
}

fn strategy_from_code(code: c_int) -> Option<Strategy> {
    usize::try_from(code).ok().and_then(|i| Strategy::ALL.get(i).copied())
}

// Strategy::ALL is in the enum's order; the codes above rely on it.
const _: () = assert!(reuseport_strategy::REUSEPORT_STRATEGY_NONE as usize == Strategy::ALL.len() - 1);

/// Chooses the strategy (a reuseport_strategy value) for the groups this set opens.
/// Before reuseport_master_open() or reuseport_single_open(); workers inherit it with the
/// set. -EINVAL for an unknown value, -EALREADY when the set holds sockets.
#[no_mangle]
pub extern "C" fn reuseport_set_set_strategy(set: *mut reuseport_set, strategy: c_int) -> c_int {
    guard("reuseport_set_set_strategy", || {
        let s = strategy_from_code(strategy)
            .ok_or_else(|| Error::invalid(format!("strategy {strategy} is not a reuseport_strategy value")))?;
        set_mut(set)?.set_strategy(s).map(|_| 0)
    })
}

/// Switches health-aware steering on (1, the default) or off (0) for the groups this set
/// opens (with the library's program as the strategy). Off, a group gets the plain
/// migration program: the least cost per connection, but the kernel's hash sends
/// handshakes to a leaving socket up to its close, and one that completes in the
/// microseconds of the close is reset (a few per reload under heavy load); steering keeps
/// new connections off a socket from the moment its worker starts leaving. To keep the
/// steering but drop the health verdicts, set the health threshold to 0 instead. Before
/// reuseport_master_open(); -EALREADY when the set holds sockets, -EINVAL for NULL.
#[no_mangle]
pub extern "C" fn reuseport_set_set_steering(set: *mut reuseport_set, on: c_int) -> c_int {
    guard("reuseport_set_set_steering", || set_mut(set)?.set_steering(on != 0).map(|_| 0))
}

/// The strategy listener `index` actually got when it was last opened in this set (never
/// AUTO; still answered after a retire), or -ENOENT for a bad index, -EAGAIN when it has
/// not been opened yet. The log (INFO, WARN
/// for a lossy fallback) says why.
#[no_mangle]
pub extern "C" fn reuseport_listener_get_strategy(set: *const reuseport_set, index: usize) -> c_int {
    guard_query("reuseport_listener_get_strategy", || {
        let set = set_ref(set)?;
        let l = super::set::listener_at(set, index)?;
        let applied = l.applied.as_ref().ok_or_else(|| {
            Error::new(libc::EAGAIN, Step::Lifecycle, format!("{}: not opened yet, no strategy applied", l.addr))
        })?;
        Ok(strategy_code(applied.strategy))
    })
}

/// A static name for a reuseport_strategy value ("auto", "bpf", "sysctl", "drain",
/// "none"), "invalid" for anything else.
#[no_mangle]
pub extern "C" fn reuseport_strategy_name(strategy: c_int) -> *const c_char {
    strategy_from_code(strategy).map_or(c"invalid", Strategy::name).as_ptr()
}

/// Parses a strategy name ("auto", "bpf", "sysctl", "drain", "none"), for config files.
/// Returns the reuseport_strategy value, or -EINVAL.
#[no_mangle]
pub extern "C" fn reuseport_strategy_parse(name: *const c_char) -> c_int {
    guard("reuseport_strategy_parse", || {
        // SAFETY: NULL or a NUL-terminated string.
        let name = unsafe { super::c_str(name, "the strategy name") }?;
        Strategy::parse(name)
            .map(strategy_code)
            .ok_or_else(|| Error::invalid(format!("unknown strategy \"{name}\" (auto, bpf, sysctl, drain, none)")))
    })
}

/// Hands the set a reuseport migration program fd the caller holds, e.g. one an
/// unprivileged master inherited across exec from a privileged one (a reload within one
/// process uses reuseport_set_inherit() instead). It is used where the group is not
/// steered (steering off, or no CAP_BPF to create it); it does not turn steering off. The set keeps its own close-on-exec
/// duplicate; the caller still owns `prog_fd`. Before opening. -EINVAL when `prog_fd` is
/// not the library's migration program (checked by type and name: a reuseport program
/// loaded for plain selection would attach but migrate nothing).
#[no_mangle]
pub extern "C" fn reuseport_set_set_program_fd(set: *mut reuseport_set, prog_fd: c_int) -> c_int {
    guard("reuseport_set_set_program_fd", || set_mut(set)?.use_program_raw(prog_fd).map(|_| 0))
}

/// The migration program fd the set holds (loaded by its open, or handed over), borrowed:
/// the set closes it when freed. To keep it across exec, dup() it without FD_CLOEXEC and
/// give the number to the new binary, which calls reuseport_set_set_program_fd(). -ENOENT when
/// the set has none.
#[no_mangle]
pub extern "C" fn reuseport_set_get_program_fd(set: *const reuseport_set) -> c_int {
    guard_query("reuseport_set_get_program_fd", || {
        set_ref(set)?.program_fd().map(|fd| fd.as_raw_fd()).ok_or_else(|| {
            Error::new(libc::ENOENT, Step::Bpf, "the set holds no migration program (not loaded or handed over)")
        })
    })
}
