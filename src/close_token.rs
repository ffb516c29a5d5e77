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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct CloseToken {
    read: OwnedFd,
    write: OwnedFd,
}

impl CloseToken {
    pub fn new() -> io::Result<Self> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 fills two fds on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fds owned by nobody else.
        let token = unsafe { CloseToken { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } };
        token.release();
        Ok(token)
    }

    /// Waits up to `patience` for the token; false when it did not come (its holder may
    /// have died): the caller goes ahead anyway.
    pub fn acquire(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        loop {
            let mut byte = 0u8;
            // SAFETY: a one-byte read into a local.
            let n = unsafe { libc::read(self.read.as_raw_fd(), &mut byte as *mut u8 as *mut libc::c_void, 1) };
            if n == 1 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut pfd = libc::pollfd { fd: self.read.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one pollfd; another process may take the byte first, then we loop.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, i32::MAX as u128) as i32) };
        }
    }

    pub fn release(&self) {
        let byte = 1u8;
        // SAFETY: a one-byte write; the pipe holds far more than the single token.
        unsafe { libc::write(self.write.as_raw_fd(), &byte as *const u8 as *const libc::c_void, 1) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_a_bounded_wait() {
        let t = CloseToken::new().unwrap();
        assert!(t.acquire(Duration::from_millis(10)));
        let start = Instant::now();
        assert!(!t.acquire(Duration::from_millis(30)), "a second holder must wait");
        assert!(start.elapsed() >= Duration::from_millis(30));
        t.release();
        assert!(t.acquire(Duration::from_millis(10)));
    }
}
