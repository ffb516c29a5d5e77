//! The socket calls socket2 does not offer on a borrowed fd: an int option by number, a
//! second listen(), accept4() into an OwnedFd, shutdown().

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// setsockopt() of a plain int option.
pub(crate) fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value is an int that lives across the call, its size given.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })
}

/// listen() again on a socket that already listens (a new backlog), or on one that was
/// shut down (listening again).
pub(crate) fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: listen() on a valid fd.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) })
}

/// shutdown(SHUT_RD) of a listener: it stops listening, and with migration on, the kernel
/// moves its queue to the other members of its reuseport group.
pub(crate) fn shutdown_read(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: shutdown() on a valid fd.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) })
}

/// One accept4() on a non-blocking listener: the connection (non-blocking, close-on-exec),
/// or the error (EAGAIN when the queue is empty).
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: accept4 on a valid fd, no address wanted.
    let c = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if c < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: c is a new connection fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(c) })
}
