//! Who holds a TCP port, read from /proc/net/tcp{,6} of this network namespace. Used only
//! to explain a failed bind: the errno alone cannot tell "another server without
//! SO_REUSEPORT" from "a reuseport group of another user".

use std::fs;

/// One socket bound to the port we wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub uid: u32,
    pub listening: bool,
    pub inode: u64,
}

/// Sockets bound to `port` in this network namespace, listeners first.
pub(crate) fn holders(port: u16) -> Vec<Holder> {
    let mut out = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(path) {
            out.extend(parse_table(&text, port));
        }
    }
    out.sort_by_key(|h| !h.listening);
    out
}

/// Parses the kernel's table: `sl local_address rem_address st ... uid timeout inode`.
fn parse_table(text: &str, port: u16) -> Vec<Holder> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let Some((_, hex_port)) = f[1].rsplit_once(':') else { continue };
        if u16::from_str_radix(hex_port, 16).ok() != Some(port) {
            continue;
        }
        // Connected sockets (client or accepted side) share the port number but do not
        // hold the bind; only listeners and bound-unconnected sockets (state CLOSE) do.
        let listening = f[3] == "0A";
        if !listening && f[3] != "07" {
            continue;
        }
        let (Ok(uid), Ok(inode)) = (f[7].parse(), f[9].parse()) else { continue };
        out.push(Holder { uid, listening, inode });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 2222 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0050 00000000:0000 07 00000000:00000000 00:00000000 00000000 65534        0 3333 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn finds_listeners_and_bound_sockets_not_connections() {
        assert_eq!(parse_table(SAMPLE, 8080), vec![Holder { uid: 0, listening: true, inode: 1111 }]);
        assert_eq!(parse_table(SAMPLE, 80), vec![Holder { uid: 65534, listening: false, inode: 3333 }]);
        assert!(parse_table(SAMPLE, 81).is_empty());
    }
}
