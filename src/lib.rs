//! # reuseport
//!
//! SO_REUSEPORT listen sockets through the whole life of a prefork server, with a C ABI.
//!
//! ```text
//! master:        open(addr…) ──fork──▶ release (closes its copies)      [reload: open again]
//!                  │ unconfigured        │
//! first worker:    └──── adopt ──▶ configure ──▶ accept…                 (same socket as master's)
//! other workers:   bind own socket (SO_REUSEPORT) ──▶ configure ──▶ drop privileges ──▶ accept…
//! ```
//!
//! For every address at least one socket stays in the reuseport group at every moment:
//! the master's until the first worker holds it, then the workers'.
//!
//! The Rust API is [`Set`]; the C API (`include/reuseport.h`) lives in [`ffi`].

pub mod bpf;
pub mod close_token;
pub mod diag;
pub mod error;
pub mod ffi;
pub mod health;
pub mod held;
pub mod lifecycle;
pub mod log;
pub mod portowner;
pub mod probe;
pub mod resolve;
pub mod retire;
pub mod socket;
pub mod spec;
pub mod steer;
pub mod steer_prog;
pub mod strategy;

pub use error::{Error, Result, Step};
pub use lifecycle::{Role, Set};
pub use spec::{Keepalive, ListenSpec, Options};
pub use strategy::Strategy;
