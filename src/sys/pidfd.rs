//! Taking a duplicate of another process's fd: pidfd_open(2) and pidfd_getfd(2), Linux 5.6+.
//! Needs PTRACE_MODE_ATTACH_REALCREDS over the target (root, or CAP_SYS_PTRACE).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A close-on-exec duplicate of fd `fd` of process `pid`, checked to be the socket with
/// `inode` (the number may have been reused since it was recorded).
pub(crate) fn take_socket(pid: u32, fd: i32, inode: u64) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with no flags takes two integers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd(2) with no flags takes three integers; the new fd is close-on-exec.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let dup = unsafe { OwnedFd::from_raw_fd(dup as i32) };
    if super::fd::socket_inode(dup.as_raw_fd()) != Some(inode) {
        return Err(io::Error::other(format!("fd {fd} of process {pid} is no longer its listen socket")));
    }
    Ok(dup)
}
