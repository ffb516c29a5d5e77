//! A Rust program using the library through its Rust API only: a set opened in one
//! process, its messages received by this program's own `log` logger.

use std::sync::atomic::{AtomicUsize, Ordering};

use reuseport::{Role, Set};

/// Counts the library's messages (target "reuseport").
struct Counter(AtomicUsize);

impl log::Log for Counter {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("reuseport")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.0.fetch_add(1, Ordering::SeqCst);
            eprintln!("log: {} {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: Counter = Counter(AtomicUsize::new(0));

fn main() -> Result<(), reuseport::Error> {
    log::set_logger(&LOGGER).expect("first logger");
    log::set_max_level(log::LevelFilter::Debug);

    let mut set = Set::new();
    set.add_spec("127.0.0.1:0 backlog=64")?;
    set.open_single()?;
    assert_eq!(set.role(), Role::Single);
    let listener = &set.listeners()[0];
    assert!(set.fd(0).is_some());
    let strategy = listener.applied().expect("opened").strategy();
    println!("consumer: {} ({strategy})", listener.spec_text());

    let e = Set::new().add_spec("127.0.0.1:80 backlog=oops").unwrap_err();
    assert_eq!(e.errno(), libc_einval());
    assert!(LOGGER.0.load(Ordering::SeqCst) > 0, "the library logs through the log facade");
    Ok(())
}

/// EINVAL on Linux, without a libc dependency.
fn libc_einval() -> i32 {
    22
}
