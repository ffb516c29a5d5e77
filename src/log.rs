//! The library's messages and where they go. Without a sink the library is silent.
//!
//! No lock: a lock held by another thread at fork() would deadlock the child, and the
//! library promises that calls made in a freshly forked child are safe. The sink is set
//! once (the C layer installs its bridge to the host's callback on the first
//! reuseport_set_log_callback()); the level filter is an atomic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Severity, numbered like syslog's so hosts can map it directly (nginx's NGX_LOG_* too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 3,
    Warn = 4,
    Info = 6,
    Debug = 7,
}

/// Where messages go: one function for the process, installed once.
pub(crate) type Sink = fn(Level, &str);

static SINK: OnceLock<Sink> = OnceLock::new();
static MAX_LEVEL: AtomicUsize = AtomicUsize::new(Level::Info as usize);

/// Installs the sink; a second, different sink is refused (false).
pub(crate) fn install_sink(sink: Sink) -> bool {
    let installed = *SINK.get_or_init(|| sink);
    installed as usize == sink as usize
}

/// Messages less severe than `level` (a syslog number, clamped) are dropped.
pub(crate) fn set_max_level(level: i32) {
    MAX_LEVEL.store(level.clamp(0, Level::Debug as i32) as usize, Ordering::SeqCst);
}

pub(crate) fn emit(level: Level, message: &str) {
    if level as usize > MAX_LEVEL.load(Ordering::SeqCst) {
        return;
    }
    if let Some(sink) = SINK.get() {
        sink(level, message);
    }
}
