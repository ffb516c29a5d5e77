//! A listen socket the set owns, remembered by inode as well as by number.
//!
//! Servers close fds behind a library's back (a daemonizing step closing everything, a
//! double close in an error path); the number may then be reused for another file. Closing
//! by number alone would close the caller's file. A held socket is closed only while its
//! fd still refers to the socket it was created as; otherwise it is left alone, with a
//! warning.

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use crate::log::{self, Level};

#[derive(Debug)]
pub struct HeldSocket {
    fd: RawFd,
    ino: u64,
    addr: SocketAddr,
}

pub(crate) fn socket_inode(fd: RawFd) -> Option<u64> {
    // SAFETY: fstat writes into a zeroed struct; any fd value is safe to ask about.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    Some(st.st_ino)
}

impl HeldSocket {
    pub fn new(fd: OwnedFd, addr: SocketAddr) -> Self {
        let fd = fd.into_raw_fd();
        let ino = socket_inode(fd).unwrap_or(0);
        HeldSocket { fd, ino, addr }
    }

    pub fn raw(&self) -> RawFd {
        self.fd
    }

    pub fn inode(&self) -> u64 {
        self.ino
    }

    /// Whether the fd still refers to the socket this was created as.
    pub fn is_intact(&self) -> bool {
        self.ino != 0 && socket_inode(self.fd) == Some(self.ino)
    }

    pub fn borrow(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd stays open while self lives, unless closed behind our back, which
        // callers check with is_intact() before relying on it.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl Drop for HeldSocket {
    fn drop(&mut self) {
        if self.is_intact() {
            // SAFETY: the fd is ours and still our socket.
            unsafe { libc::close(self.fd) };
        } else {
            log::emit(
                Level::Warn,
                &format!("{}: fd {} was closed or replaced outside the library; leaving it alone (never close fds a reuseport_set owns)", self.addr, self.fd),
            );
        }
    }
}
