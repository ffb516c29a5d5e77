//! The library's messages, sent through the `log` facade with target `"reuseport"`.
//!
//! A Rust program sees them in whatever logger it installed (`env_logger`, `tracing`'s
//! bridge...); the C API installs its own logger, which forwards to the host's callback
//! (capi/log.rs). With no logger the library is silent.
//!
//! No lock on this path: a lock held by another thread at fork() would deadlock the child,
//! and the library promises that calls in a freshly forked child are safe. The `log`
//! crate's logger and level filter are atomics, and the C bridge uses atomics only.

/// The target of every message the library logs, for filtering (`RUST_LOG=reuseport=debug`).
pub(crate) const TARGET: &str = "reuseport";

/// Severity of the library's messages; the C API numbers them like syslog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// A call failed; it also returns the error.
    Error,
    /// Something works, but in a degraded or surprising way.
    Warn,
    /// A lifecycle step (a release, the port the kernel chose).
    Info,
    /// Every socket opened, adopted, configured; "not there" answers of accessors.
    Debug,
}

impl From<Level> for ::log::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Error => ::log::Level::Error,
            Level::Warn => ::log::Level::Warn,
            Level::Info => ::log::Level::Info,
            Level::Debug => ::log::Level::Debug,
        }
    }
}

pub(crate) fn emit(level: Level, message: &str) {
    ::log::log!(target: TARGET, level.into(), "{message}");
}
