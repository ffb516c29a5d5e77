//! The rescue: moving the connections queued on a stalled worker's socket to its healthy
//! siblings, without the worker's help (see watch.rs for why and when).

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use super::slots::{Group, FLAG_OVERLOADED, FLAG_RETIRING, FLAG_STALE};
use crate::log::{self, Level};
use crate::sys::{bpf, diag, pidfd, socket};

/// Moves slot `slot`'s queue to its siblings: takes a duplicate of the worker's socket,
/// shuts it down (the kernel migrates the queue through the steering program, which skips
/// the stalled slot), listens again at once and puts it back in the sockarray.
///
/// Returns the errno when the master lacks the privilege to take the socket (logged once:
/// `denied_before` says it was already), None otherwise.
pub(crate) fn rescue(
    s: &Group<'_>,
    slot: usize,
    listeners: &HashMap<u64, diag::Listener>,
    denied_before: bool,
) -> Option<i32> {
    let t = s.table;
    let (pid, fd, inode, backlog) = (
        t.pid(slot).load(Ordering::Relaxed),
        t.fd(slot).load(Ordering::Relaxed),
        t.inode(slot).load(Ordering::Relaxed),
        t.backlog(slot).load(Ordering::Relaxed),
    );
    // The queue needs somewhere to go: another listener of this port that is not itself
    // stalled or leaving (members of another generation count).
    let unfit: Vec<u64> = (0..t.high())
        .filter(|&i| t.flags(i).load(Ordering::Acquire) & (FLAG_STALE | FLAG_RETIRING | FLAG_OVERLOADED) != 0)
        .map(|i| t.inode(i).load(Ordering::Relaxed))
        .collect();
    let dev = diag::group_device(listeners, [inode], &s.addr);
    if !listeners.iter().any(|(ino, l)| l.is_on(&s.addr, dev) && *ino != inode && !unfit.contains(ino)) {
        log::emit(Level::Debug, &format!("{}: worker {pid}'s queue stays: no healthy sibling to take it", s.addr));
        return None;
    }
    let queued = listeners.get(&inode).map_or(0, |l| l.queue);
    let dup = match pidfd::take_socket(pid, fd, inode) {
        Ok(dup) => dup,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            if matches!(errno, libc::EPERM | libc::EACCES | libc::ENOSYS) {
                if !denied_before {
                    log::emit(Level::Warn, &format!("{}: cannot take over stalled worker {pid}'s queue (pidfd_getfd: {e}); the master needs root or CAP_SYS_PTRACE over its workers, and Linux 5.6+; its {queued} waiting connection(s) stay until it resumes", s.addr));
                }
                return Some(errno);
            }
            log::emit(Level::Debug, &format!("{}: rescue of worker {pid}: {e}", s.addr));
            return None;
        }
    };
    // The socket is shared, so the worker's fd sees the same state: listening again, its
    // queue served by a sibling.
    let restarted = socket::shutdown_read(dup.as_fd())
        .map_err(|e| ("shutdown", e))
        .and_then(|()| socket::listen(dup.as_fd(), backlog).map_err(|e| ("listen", e)));
    if let Err((step, e)) = restarted {
        log::emit(Level::Warn, &format!("{}: rescue of worker {pid}'s queue: {step} failed: {e}", s.addr));
        return None;
    }
    if let Err(e) = bpf::sockarray_set(s.sockarray, slot as u32, dup.as_fd()) {
        log::emit(
            Level::Warn,
            &format!("{}: worker {pid}'s socket listens again but is not back in the steering map: {e}", s.addr),
        );
    }
    log::emit(
        Level::Info,
        &format!("{}: moved the {queued} connection(s) queued on stalled worker {pid} to its siblings", s.addr),
    );
    None
}
