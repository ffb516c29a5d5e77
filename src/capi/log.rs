//! Routing the library's messages into the host's log.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::log::{self, Level};

// cbindgen reads literals only; keep these equal to log::Level.
const _: () = assert!(REUSEPORT_LOG_ERROR == Level::Error as c_int && REUSEPORT_LOG_WARN == Level::Warn as c_int);
const _: () = assert!(REUSEPORT_LOG_INFO == Level::Info as c_int && REUSEPORT_LOG_DEBUG == Level::Debug as c_int);

/// The host's logging function: `level` is one of REUSEPORT_LOG_*, `message` a
/// NUL-terminated line without a trailing newline, valid only during the call, `user` the
/// pointer given to reuseport_set_log_callback().
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
/// Who: any process, once, at startup, before forking; the hook is inherited by children.
/// `message` is valid only during the call. The callback may run in the master or any
/// worker, on the thread that called the library.
#[no_mangle]
pub extern "C" fn reuseport_set_log_callback(callback: reuseport_log_fn, user: *mut c_void, max_level: c_int) {
    CALLBACK.store(0, Ordering::SeqCst);
    USER.store(user as usize, Ordering::SeqCst);
    log::set_max_level(max_level);
    if let Some(f) = callback {
        CALLBACK.store(f as usize, Ordering::SeqCst);
    }
    log::install_sink(to_callback);
}

// The host's callback and its pointer. Atomics, not a lock: see log.rs.
static CALLBACK: AtomicUsize = AtomicUsize::new(0);
static USER: AtomicUsize = AtomicUsize::new(0);

type Callback = unsafe extern "C" fn(c_int, *const c_char, *mut c_void);

/// The core's sink: hands each message to the host's callback, if one is installed.
fn to_callback(level: Level, message: &str) {
    let f = CALLBACK.load(Ordering::SeqCst);
    if f == 0 {
        return;
    }
    // SAFETY: CALLBACK only ever holds 0 or a callback stored by reuseport_set_log_callback.
    let f: Callback = unsafe { std::mem::transmute::<usize, Callback>(f) };
    let text = CString::new(message.replace('\0', "\\0")).expect("NULs replaced");
    let user = USER.load(Ordering::SeqCst) as *mut c_void;
    // SAFETY: the host promised a callable function; the string lives across the call.
    unsafe { f(level as c_int, text.as_ptr(), user) };
}
