//! The host's logging hook. Without one the library is silent.
//!
//! Two atomics instead of a lock: a lock held by another thread at fork() would deadlock
//! the child, and the library promises that calls made in a freshly forked child are safe.
//! Set the hook once, at startup, before forking.

use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Severity, numbered like syslog's so hosts can map it directly (nginx's NGX_LOG_* too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 3,
    Warn = 4,
    Info = 6,
    Debug = 7,
}

/// The host's callback, NULL-able (see reuseport_set_log_callback()).
pub type LogFn = crate::ffi::log::reuseport_log_fn;

static HOOK: AtomicUsize = AtomicUsize::new(0);
static USER: AtomicUsize = AtomicUsize::new(0);
static MAX_LEVEL: AtomicUsize = AtomicUsize::new(Level::Info as usize);

/// Installs (or, with `None`, removes) the hook. `max_level` filters by severity.
pub fn set_hook(hook: LogFn, user: *mut c_void, max_level: i32) {
    HOOK.store(0, Ordering::SeqCst);
    USER.store(user as usize, Ordering::SeqCst);
    MAX_LEVEL.store(max_level.clamp(0, Level::Debug as i32) as usize, Ordering::SeqCst);
    if let Some(f) = hook {
        HOOK.store(f as usize, Ordering::SeqCst);
    }
}

pub fn emit(level: Level, message: &str) {
    let f = HOOK.load(Ordering::SeqCst);
    if f == 0 || level as usize > MAX_LEVEL.load(Ordering::SeqCst) {
        return;
    }
    type Callback = unsafe extern "C" fn(i32, *const std::ffi::c_char, *mut c_void);
    // SAFETY: HOOK only ever holds 0 or a callback stored by set_hook.
    let f: Callback = unsafe { std::mem::transmute::<usize, Callback>(f) };
    let text = CString::new(message.replace('\0', "\\0")).expect("NULs replaced");
    let user = USER.load(Ordering::SeqCst) as *mut c_void;
    // SAFETY: the host promised a callable function; the string lives across the call.
    unsafe { f(level as i32, text.as_ptr(), user) };
}
