//! The system calls that the standard library, socket2 and nix do not wrap safely:
//! bpf(2), sock_diag, pidfd, shared memory, a few socket and fd calls, and the /proc files
//! the library reads.
//!
//! This is the only module besides `capi/` that may use `unsafe`. Each function is a safe
//! wrapper: it owns what the kernel returns (`OwnedFd`), zeroes or fully initialises every
//! block it hands the kernel, and reports failure as `io::Error`. Policy (what to do about
//! an error, what to tell the operator) belongs to the callers.

pub(crate) mod bpf;
pub(crate) mod diag;
pub(crate) mod fd;
pub(crate) mod pidfd;
pub(crate) mod procfs;
pub(crate) mod shared;
pub(crate) mod socket;
