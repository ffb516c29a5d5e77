//! One error type for the whole library: an errno for the C caller, and a message for the
//! operator that names the address, the step and what to do about it.

use std::fmt;
use std::io;

/// The step of a socket's life an error happened in. It is part of every message so an
/// operator reading a log line knows which syscall failed without reading the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    Parse,
    Resolve,
    Socket,
    Setsockopt,
    Bind,
    Listen,
    Adopt,
    Lifecycle,
    Bpf,
    Probe,
}

impl Step {
    /// Its name as it appears in messages ("bind", "setsockopt"...).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Parse => "parse",
            Step::Resolve => "resolve",
            Step::Socket => "socket",
            Step::Setsockopt => "setsockopt",
            Step::Bind => "bind",
            Step::Listen => "listen",
            Step::Adopt => "adopt",
            Step::Lifecycle => "lifecycle",
            Step::Bpf => "bpf",
            Step::Probe => "probe",
        }
    }
}

/// Why a call failed: an errno for the program, a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// A positive errno value (`EINVAL`, `EADDRINUSE`...). The C API returns its negation.
    pub(crate) errno: i32,
    pub(crate) step: Step,
    pub(crate) message: String,
}

/// The library's `Result`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The errno (positive: `libc::EADDRINUSE`...); the C API returns its negation.
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The step it happened in.
    pub fn step(&self) -> Step {
        self.step
    }

    /// The message: the address, the step and what to do about it.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn new(errno: i32, step: Step, message: impl Into<String>) -> Self {
        Error { errno, step, message: message.into() }
    }

    /// A bad listen spec or bad argument: always `EINVAL`.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(libc::EINVAL, Step::Parse, message)
    }

    /// Misuse of the lifecycle order (adopt without open, release twice...).
    pub(crate) fn lifecycle(errno: i32, message: impl Into<String>) -> Self {
        Error::new(errno, Step::Lifecycle, message)
    }

    /// A failed syscall on `addr` during `step`, with a hint for the operator.
    /// `hint` may be empty when the errno text says it all.
    pub(crate) fn sys(err: &io::Error, step: Step, addr: &str, hint: &str) -> Self {
        let errno = err.raw_os_error().unwrap_or(libc::EIO);
        let mut message = format!("{addr}: {}: {}", step.as_str(), strerror(errno));
        if !hint.is_empty() {
            message.push_str(": ");
            message.push_str(hint);
        }
        Error { errno, step, message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// `strerror` text plus the symbolic name, e.g. "Address already in use (EADDRINUSE)":
/// the name is what people search for.
pub(crate) fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    // std appends " (os error N)"; the symbolic name is more useful.
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    match errno_name(errno) {
        Some(name) => format!("{text} ({name})"),
        None => text,
    }
}

fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EINVAL => "EINVAL",
        libc::EBADF => "EBADF",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EALREADY => "EALREADY",
        libc::ENOENT => "ENOENT",
        libc::ENOSYS => "ENOSYS",
        libc::EFAULT => "EFAULT",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_error_names_address_step_errno_and_hint() {
        let e = Error::sys(
            &io::Error::from_raw_os_error(libc::EADDRINUSE),
            Step::Bind,
            "127.0.0.1:80",
            "another server holds this port",
        );
        assert_eq!(e.errno, libc::EADDRINUSE);
        assert_eq!(
            e.message,
            "127.0.0.1:80: bind: Address already in use (EADDRINUSE): another server holds this port"
        );
    }
}
