//! The thread-local last-error message, like errno but with words.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};

/// Returned negated (-REUSEPORT_EINTERNAL) when a call hit a bug in the library (a Rust
/// panic, caught at the boundary): the call did nothing it could report, and
/// reuseport_last_error() says where. Beyond the errno range (like libbpf's own codes),
/// so it is never mistaken for a system error; strerror() does not know it.
pub const REUSEPORT_EINTERNAL: c_int = 4000;

thread_local! {
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last(message: &str) {
    let text = CString::new(message.replace('\0', "\\0")).expect("NULs replaced");
    LAST.with(|l| *l.borrow_mut() = text);
}

/// The message of the last call that failed on this thread: the function, the address,
/// the step (socket, bind, listen, setsockopt, bpf...) and what to do about it, e.g.
/// "reuseport_worker_bind: 127.0.0.1:80: bind: Permission denied (EACCES): ...". Never
/// NULL; empty when no call has failed yet. The same text also goes to the log callback at
/// REUSEPORT_LOG_ERROR, so a host that logs through the callback need not log it again. Meaningful right after a call returned a negative value;
/// successful calls leave it as it was, like errno. The string belongs to the library and
/// stays valid until the next failing call on this thread: copy it before making another
/// call in the same expression.
#[no_mangle]
pub extern "C" fn reuseport_last_error() -> *const c_char {
    LAST.try_with(|l| l.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}
