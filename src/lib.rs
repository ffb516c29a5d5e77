//! # reuseport
//!
//! SO_REUSEPORT listen sockets through the whole life of a prefork server, with a C ABI.
//!
//! ```text
//! master:        open(addr…) ──fork──▶ release (closes its copies)      [reload: open again]
//!                  │ unconfigured        │
//! first worker:    └──── adopt ──▶ configure ──▶ accept…                 (same socket as master's)
//! other workers:   bind own socket (SO_REUSEPORT) ──▶ configure ──▶ drop privileges ──▶ accept…
//! leaving worker:  retire: its queue migrates to the survivors (or drains)
//! ```
//!
//! For every address at least one socket stays in the reuseport group at every moment:
//! the master's until the first worker holds it, then the workers'.
//!
//! The Rust API is [`Set`]; the C API (`include/reuseport.h`) is generated from the
//! private `capi` module and wraps the same calls.
//!
//! # Example
//!
//! A master opens, forks its first worker, which adopts the master's socket, and releases
//! its copy; every later worker binds its own socket into the group (before dropping
//! privileges). In one process, with a second set standing in for a later worker's copy
//! (`examples/lifecycle.rs` forks real workers):
//!
//! ```
//! use reuseport::{Role, Set};
//!
//! let mut master = Set::new();
//! master.add_spec("127.0.0.1:0 backlog=1024")?; // port 0: the kernel chooses, once
//! master.master_open()?;
//! let spec = master.listeners()[0].spec_text(); // with the port actually bound
//!
//! // A later worker: its own SO_REUSEPORT socket in the same group.
//! let mut worker = Set::new();
//! worker.add_spec(&spec)?;
//! worker.worker_bind()?;
//! assert_eq!(worker.role(), Role::Bound);
//!
//! master.release()?; // the master closes its copy; the group lives on in the worker
//! std::net::TcpStream::connect(master.listeners()[0].addr()).expect("the worker's socket accepts");
//!
//! // Leaving: with migration the queue moves to the survivors; with drain, each queued
//! // connection is handed to the closure, which serves it (None) or refuses it. A retire
//! // never blocks: it says when to call it again (an event loop serves meanwhile).
//! let mut serve = |_conn, _index| None;
//! while let reuseport::Progress::Again(wait) = worker.retire(Some(&mut serve))? {
//!     std::thread::sleep(wait);
//! }
//! # Ok::<(), reuseport::Error>(())
//! ```
//!
//! # Logging
//!
//! The library logs through the [`log`](https://docs.rs/log) facade with target
//! `"reuseport"`: install any logger to see its messages. Without one it is silent.
//!
//! # Processes and threads
//!
//! A set is plain memory: after `fork()` the child has its own copy, holding the same fds,
//! and each process calls the method of its role on its copy. No method starts a thread
//! or holds a lock across `fork()`, so a freshly forked child of a single-threaded parent
//! (a prefork master) may use its copy at once. A [`Set`] is `Send`; methods that change
//! it take `&mut self`.
//!
//! Layers, lowest first (a module uses only those below it):
//! `error`, `log` → `sys` (the system calls; the only `unsafe` outside `capi`) → `spec`,
//! `strategy` (pure) → `steering` (slot table, program, watch) → `set` (the lifecycle) →
//! `probe` → `capi` (the C ABI).

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod capi;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod log;
mod probe;
mod set;
mod spec;
mod steering;
mod strategy;
mod sys;

pub use error::{Error, Result, Step};
pub use probe::{probe, Probe};
pub use set::{DrainTiming, Listener, Progress, Role, Set};
pub use spec::{Keepalive, Options};
pub use steering::{SlotState, SlotStatus};
pub use strategy::{Applied, Strategy};
