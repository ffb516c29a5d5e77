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
//! private `capi` module.
//!
//! Layers, lowest first (a module uses only those below it):
//! `error`, `log` → `sys` (the system calls; the only `unsafe` outside `capi`) → `spec`,
//! `strategy` (pure) → `steering` (slot table, program, watch) → `set` (the lifecycle) →
//! `probe` → `capi` (the C ABI).

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod capi;
mod error;
mod log;
mod probe;
mod set;
mod spec;
mod steering;
mod strategy;
mod sys;

pub use error::{Error, Result, Step};
pub use log::Level;
pub use probe::{probe, Probe};
pub use set::{DrainTiming, Listener, Progress, Role, Set};
pub use spec::{Keepalive, ListenSpec, Options};
pub use steering::{SlotState, SlotStatus};
pub use strategy::{Applied, Strategy};
