//! Plain fd queries and duplication.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The inode of the socket `fd` refers to, or None when `fd` is not open or not a socket.
/// Any number is safe to ask about: fstat only reads the fd table.
pub(crate) fn socket_inode(fd: RawFd) -> Option<u64> {
    // SAFETY: fstat writes into a zeroed struct it owns for the call; any fd value is fine.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    Some(st.st_ino)
}

/// Whether `fd` is an open file descriptor of this process.
pub(crate) fn is_open(fd: RawFd) -> bool {
    // SAFETY: fcntl(F_GETFD) on any int only reports whether it is open.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// A close-on-exec duplicate of fd number `fd` (numbered 3 or above), owned by the caller;
/// `fd` itself stays the caller's. EBADF when it is not open.
pub(crate) fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on any int either fails or returns a new fd.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dup is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Raises this process's soft limit on open files to `want` (at most the hard limit);
/// returns the new soft limit. For tests that hold thousands of sockets.
#[cfg(test)]
pub(crate) fn raise_nofile(want: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = want.min(lim.rlim_max);
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}
