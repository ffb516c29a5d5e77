//! The C ABI (private: only the `#[no_mangle]` exports leave the crate), and the only
//! code that sees raw pointers and C strings. Every exported body
//! runs under [`guard`], so no panic crosses into C and every failure sets the thread's
//! last-error message.
//!
//! Names follow C conventions (`reuseport_set`, `REUSEPORT_ROLE_BOUND`): they are the C API.
#![allow(non_camel_case_types)]

// In lifecycle order: cbindgen writes the header in this order (blank lines keep
// rustfmt from sorting them).
// The set: create, add specs, query, free.
mod set;

mod options;

// The master: open before forking, release after forking the first worker.
mod master;

// The workers: the first adopts, the others bind.
mod worker;

// Leaving the groups.
mod retire;

// Health-aware steering: heartbeat, watch, slots.
mod health;

// How a group keeps a leaving socket's queue.
mod strategy;

// What this kernel and process can do.
mod probe;

// The host's log, and the last error.
mod log;

mod error;

// How structs and text cross the boundary so that the ABI can grow.
mod abi;

use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Error, Step};
use crate::log::Level;

/// Runs an exported body: `Ok(n)` → `n`, `Err(e)` → `-errno` with the message recorded and
/// logged, a panic → `-REUSEPORT_EINTERNAL` with a message that says it is a bug.
pub(crate) fn guard(function: &str, body: impl FnOnce() -> crate::Result<c_int>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => fail(function, e),
        Err(panic) => fail(function, panic_error(function, panic)),
    }
}

/// Like [`guard`] for accessors, whose "not there" answers (-ENOENT, -EBADF, -EAGAIN) are
/// part of normal use: the message is recorded but logged only at debug level.
pub(crate) fn guard_query(function: &str, body: impl FnOnce() -> crate::Result<c_int>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => record(function, e, Level::Debug),
        Err(panic) => fail(function, panic_error(function, panic)),
    }
}

/// Like [`guard`] for functions returning nothing or a pointer: `fallback` on failure.
pub(crate) fn guard_or<T>(function: &str, fallback: T, body: impl FnOnce() -> crate::Result<T>) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            fail(function, e);
            fallback
        }
        Err(panic) => {
            fail(function, panic_error(function, panic));
            fallback
        }
    }
}

fn fail(function: &str, e: Error) -> c_int {
    record(function, e, Level::Error)
}

fn record(function: &str, e: Error, level: Level) -> c_int {
    let message = format!("{function}: {}", e.message);
    crate::log::emit(level, &message);
    error::set_last(&message);
    -e.errno.abs().max(1)
}

fn panic_error(function: &str, panic: Box<dyn std::any::Any + Send>) -> Error {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Error::new(
        error::REUSEPORT_EINTERNAL,
        Step::Lifecycle,
        format!("internal error in {function} (a bug in reuseport, please report it): {what}"),
    )
}

/// A non-NULL, NUL-terminated UTF-8 argument.
///
/// # Safety
/// `p` is NULL or points at a NUL-terminated string.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> crate::Result<&'a str> {
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated (the caller's contract).
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| Error::invalid(format!("{what} is not valid UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_internal_error_code_with_a_message() {
        let rc = guard("reuseport_test", || -> crate::Result<c_int> { panic!("boom") });
        assert_eq!(rc, -error::REUSEPORT_EINTERNAL);
        // SAFETY: reuseport_last_error never returns NULL.
        let msg = unsafe { CStr::from_ptr(error::reuseport_last_error()) }.to_str().unwrap();
        assert!(msg.contains("internal error in reuseport_test") && msg.contains("boom"), "{msg}");
        assert_eq!(guard_or("reuseport_test", 7, || -> crate::Result<i32> { panic!("again") }), 7);
    }

    #[test]
    fn an_error_becomes_negative_errno_and_last_error() {
        let rc = guard("reuseport_test", || Err(Error::invalid("bad thing")));
        assert_eq!(rc, -libc::EINVAL);
        // SAFETY: as above.
        let msg = unsafe { CStr::from_ptr(error::reuseport_last_error()) }.to_str().unwrap();
        assert_eq!(msg, "reuseport_test: bad thing");
    }
}
