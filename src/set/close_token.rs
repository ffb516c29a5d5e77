//! One token shared by the processes a master forks, so that their sockets leave their
//! groups one at a time.
//!
//! When a listener closes with migration on, the kernel moves each queued connection to
//! another member of the group (net/ipv4/inet_connection_sock.c, inet_csk_listen_stop());
//! if that member is itself closing at that instant, inet_csk_reqsk_queue_add() finds it
//! no longer listening and resets the connection. A reload stops every old worker at
//! once, so their closes do overlap: measured here at saturation, about one reset per
//! hundred thousand connections over ten reloads. Taking turns removes the overlap.
//!
//! A closed listener's half-open handshakes migrate later, one by one as their final ACK
//! arrives, to a member chosen at that moment; with turns taken back to back, the next
//! member was closing exactly then (nginx, 2 workers, 10 reloads at 4,000 connections/s:
//! 1 reset in 8 runs). A turn therefore lasts a little longer than the close (retire.rs).
//!
//! The token is a byte in a pipe created with the set and inherited across fork. It is
//! held only for the close() calls, and waited for at most a bounded time, so a process
//! killed while holding it delays the others, never blocks them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;

#[derive(Debug)]
pub struct CloseToken {
    read: OwnedFd,
    write: OwnedFd,
}

impl CloseToken {
    pub fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let token = CloseToken { read, write };
        token.release();
        Ok(token)
    }

    /// The same token (the same pipe), for another set of the same master.
    pub fn try_clone(&self) -> io::Result<CloseToken> {
        Ok(CloseToken { read: self.read.try_clone()?, write: self.write.try_clone()? })
    }

    /// Readable when the token may be free: what a waiting caller polls.
    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Takes the token if it is free now: never waits.
    pub fn try_acquire(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(nix::unistd::read(self.read.as_raw_fd(), &mut byte), Ok(1))
    }

    pub fn release(&self) {
        // The pipe holds far more than the single token; a failed write (EAGAIN) cannot
        // happen while only one byte circulates.
        let _ = nix::unistd::write(&self.write, &[1u8]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    fn readable(t: &CloseToken) -> bool {
        poll(&mut [PollFd::new(t.poll_fd(), PollFlags::POLLIN)], PollTimeout::ZERO).unwrap() == 1
    }

    #[test]
    fn one_holder_at_a_time_across_clones_and_pollable_when_free() {
        let t = CloseToken::new().unwrap();
        let other = t.try_clone().unwrap();
        assert!(readable(&t), "a free token is readable");
        assert!(t.try_acquire());
        assert!(!other.try_acquire(), "a clone shares the one token");
        assert!(!readable(&other), "a held token is not readable");
        t.release();
        assert!(readable(&other));
        assert!(other.try_acquire());
    }
}
