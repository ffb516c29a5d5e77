//! Routing the library's messages into the host's log: a `log::Log` that forwards the
//! records of target "reuseport" to the host's callback.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use crate::log::TARGET;

/// The host's logging function: `level` is one of REUSEPORT_LOG_*, `message` a
/// NUL-terminated line without a trailing newline, valid only during the call, `user` the
/// pointer given to reuseport_log_set_callback().
pub type reuseport_log_fn = Option<unsafe extern "C" fn(level: c_int, message: *const c_char, user: *mut c_void)>;

/// `level`: an error; the call that failed also returns a negative errno.
pub const REUSEPORT_LOG_ERROR: c_int = 3;
/// `level`: something works, but in a degraded or surprising way.
pub const REUSEPORT_LOG_WARN: c_int = 4;
/// `level`: a lifecycle step (a release, the port the kernel chose).
pub const REUSEPORT_LOG_INFO: c_int = 6;
/// `level`: every socket opened, adopted, configured.
pub const REUSEPORT_LOG_DEBUG: c_int = 7;

/// Installs a logging callback: `callback(level, message, user)` for every message at
/// `max_level` or more severe (levels are syslog's: REUSEPORT_LOG_ERROR = 3 ...
/// REUSEPORT_LOG_DEBUG = 7). Pass NULL to remove it; without one the library is silent.
///
/// Who: any process, at startup, before forking; the hook is inherited by children.
/// Threads: the hook is process-wide: install it before starting threads that call the
/// library. The callback runs on the thread that made the call being logged, in the
/// master or any worker; `message` is valid only during the call.
///
/// A program that also uses the library from Rust and installed its own `log` logger
/// keeps it: the callback is then not called (the messages go to that logger).
#[no_mangle]
pub extern "C" fn reuseport_log_set_callback(callback: reuseport_log_fn, user: *mut c_void, max_level: c_int) {
    CALLBACK.store(0, Ordering::SeqCst);
    USER.store(user as usize, Ordering::SeqCst);
    MAX_LEVEL.store(max_level, Ordering::SeqCst);
    if let Some(f) = callback {
        CALLBACK.store(f as usize, Ordering::SeqCst);
    }
    // Once per process; refused (and harmless) when a Rust logger is already installed.
    if ::log::set_logger(&BRIDGE).is_ok() || is_bridge_installed() {
        let filter = match callback {
            None => ::log::LevelFilter::Off,
            Some(_) => level_filter(max_level),
        };
        ::log::set_max_level(filter);
    }
}

// The host's callback, its pointer and its level. Atomics, not a lock: see crate::log.
static CALLBACK: AtomicUsize = AtomicUsize::new(0);
static USER: AtomicUsize = AtomicUsize::new(0);
static MAX_LEVEL: AtomicI32 = AtomicI32::new(REUSEPORT_LOG_INFO);

type Callback = unsafe extern "C" fn(c_int, *const c_char, *mut c_void);

struct Bridge;
static BRIDGE: Bridge = Bridge;

fn is_bridge_installed() -> bool {
    std::ptr::addr_eq(::log::logger() as *const dyn ::log::Log, &BRIDGE as *const Bridge)
}

/// The syslog number of a `log` level (trace is sent as debug).
fn syslog_level(level: ::log::Level) -> c_int {
    match level {
        ::log::Level::Error => REUSEPORT_LOG_ERROR,
        ::log::Level::Warn => REUSEPORT_LOG_WARN,
        ::log::Level::Info => REUSEPORT_LOG_INFO,
        ::log::Level::Debug | ::log::Level::Trace => REUSEPORT_LOG_DEBUG,
    }
}

/// The `log` filter that lets through the levels at `max_level` or more severe.
fn level_filter(max_level: c_int) -> ::log::LevelFilter {
    match max_level {
        i32::MIN..=2 => ::log::LevelFilter::Off,
        3 => ::log::LevelFilter::Error,
        4 | 5 => ::log::LevelFilter::Warn,
        6 => ::log::LevelFilter::Info,
        _ => ::log::LevelFilter::Debug,
    }
}

impl ::log::Log for Bridge {
    fn enabled(&self, metadata: &::log::Metadata<'_>) -> bool {
        metadata.target().starts_with(TARGET)
            && syslog_level(metadata.level()) <= MAX_LEVEL.load(Ordering::SeqCst)
            && CALLBACK.load(Ordering::SeqCst) != 0
    }

    fn log(&self, record: &::log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let f = CALLBACK.load(Ordering::SeqCst);
        if f == 0 {
            return;
        }
        // SAFETY: CALLBACK only ever holds 0 or a callback stored by reuseport_log_set_callback.
        let f: Callback = unsafe { std::mem::transmute::<usize, Callback>(f) };
        let text = CString::new(record.args().to_string().replace('\0', "\\0")).expect("NULs replaced");
        let user = USER.load(Ordering::SeqCst) as *mut c_void;
        // SAFETY: the host promised a callable function; the string lives across the call.
        unsafe { f(syslog_level(record.level()), text.as_ptr(), user) };
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_both_ways() {
        for (syslog, level) in [
            (REUSEPORT_LOG_ERROR, ::log::Level::Error),
            (REUSEPORT_LOG_WARN, ::log::Level::Warn),
            (REUSEPORT_LOG_INFO, ::log::Level::Info),
            (REUSEPORT_LOG_DEBUG, ::log::Level::Debug),
        ] {
            assert_eq!(syslog_level(level), syslog);
            assert_eq!(level_filter(syslog), level.to_level_filter());
        }
        assert_eq!(level_filter(0), ::log::LevelFilter::Off);
    }
}
