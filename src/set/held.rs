//! A listen socket the set owns, remembered by inode as well as by number.
//!
//! Servers close fds behind a library's back (a daemonizing step closing everything, a
//! double close in an error path); the number may then be reused for another file. Closing
//! by number alone would close the caller's file. A held socket is closed only while its
//! fd still refers to the socket it was created as; otherwise it is left alone, with a
//! warning.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use crate::log::{self, Level};
use crate::sys::fd::socket_inode;

#[derive(Debug)]
pub struct HeldSocket {
    /// Always Some until drop decides whether to close it.
    fd: Option<OwnedFd>,
    ino: u64,
    addr: SocketAddr,
}

impl HeldSocket {
    pub fn new(fd: OwnedFd, addr: SocketAddr) -> Self {
        let ino = socket_inode(fd.as_raw_fd()).unwrap_or(0);
        HeldSocket { fd: Some(fd), ino, addr }
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_ref().expect("held until dropped").as_raw_fd()
    }

    pub fn inode(&self) -> u64 {
        self.ino
    }

    /// Whether the fd still refers to the socket this was created as.
    pub fn is_intact(&self) -> bool {
        intact(self.raw(), self.ino)
    }

    /// The fd, borrowed. If the caller closed it behind the library's back, this refers to
    /// whatever now has the number: callers that act on it check is_intact() first.
    pub fn borrow(&self) -> BorrowedFd<'_> {
        self.fd.as_ref().expect("held until dropped").as_fd()
    }
}

impl Drop for HeldSocket {
    fn drop(&mut self) {
        let Some(fd) = self.fd.take() else { return };
        if intact(fd.as_raw_fd(), self.ino) {
            drop(fd);
        } else {
            // Not ours any more: forget the number without closing it.
            let raw = fd.into_raw_fd();
            log::emit(
                Level::Warn,
                &format!("{}: fd {raw} was closed or replaced outside the library; leaving it alone (never close fds a reuseport_set owns)", self.addr),
            );
        }
    }
}

/// Whether `fd` still refers to socket inode `ino` (0: never knew it).
fn intact(fd: RawFd, ino: u64) -> bool {
    ino != 0 && socket_inode(fd) == Some(ino)
}
