//! The listen-spec parser on arbitrary text: it never panics, every error is EINVAL with a
//! message that quotes the spec, and every spec it accepts has a canonical form (what
//! `reuseport_listener_get_spec()` prints) that parses back to the same listener and is
//! its own canonical form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reuseport::fuzzing::parse_spec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_spec(text) {
        Err(e) => {
            assert_eq!(e.errno(), libc::EINVAL, "{text:?}: {e}");
            assert!(e.message().starts_with("invalid listen spec \""), "{text:?}: {}", e.message());
            assert!(
                e.message().len() > "invalid listen spec \"\": ".len() + text.len().min(1),
                "{text:?}: {}",
                e.message()
            );
        }
        Ok(parsed) => {
            let Some(canonical) = parsed.canonical.as_deref() else { return };
            let again = parse_spec(canonical).unwrap_or_else(|e| panic!("{text:?} → {canonical:?}: {e}"));
            assert_eq!(again.addr, parsed.addr, "{text:?} → {canonical:?}");
            assert_eq!(again.options, parsed.options, "{text:?} → {canonical:?}");
            assert_eq!(again.canonical.as_deref(), Some(canonical), "{text:?}: not a fixed point");
        }
    }
});
