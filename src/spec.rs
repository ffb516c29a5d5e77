//! Listen specs in nginx's `listen` syntax: `127.0.0.1:8080`, `*:80`, `8080`, `[::1]:8443`,
//! `[::]:443 ipv6only=on`, followed by `backlog=N`, `rcvbuf=SIZE`, `sndbuf=SIZE`, `deferred`,
//! `fastopen=N`, `so_keepalive=on|off|[idle]:[intvl]:[cnt]`.
//!
//! Pure: no I/O. Host names are kept as names here and resolved by `resolve.rs`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{Error, Result};

/// nginx's listen backlog on Linux (NGX_LISTEN_BACKLOG).
pub const DEFAULT_BACKLOG: i32 = 511;
/// nginx's port when a listen address has none.
pub const DEFAULT_PORT: u16 = 80;

// Linux limits (include/net/tcp.h); checked here so a typo fails at parse time with a
// message, not at configure time in a worker.
const MAX_TCP_KEEPIDLE: u32 = 32767;
const MAX_TCP_KEEPINTVL: u32 = 32767;
const MAX_TCP_KEEPCNT: u32 = 127;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// `*:80` or a bare port: every IPv4 address, as in nginx.
    Any,
    Ip(IpAddr),
    /// Resolved later; a name may stand for several addresses.
    Name(String),
}

/// `so_keepalive=`: leave the system default, force off, or on with optional tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Keepalive {
    #[default]
    Default,
    Off,
    On {
        idle: Option<u32>,
        intvl: Option<u32>,
        cnt: Option<u32>,
    },
}

/// Socket options of one listener. `backlog` and `ipv6only` belong to `listen()`/`bind()` and
/// are applied when the socket is opened; all others are applied by `configure`.
///
/// Start from [`Options::default()`] (nginx's defaults) and change fields; the struct may
/// grow, so it cannot be built with a literal outside this crate. [`Set::add_addr`]
/// checks the values.
///
/// ```
/// let mut o = reuseport::Options::default();
/// o.backlog = 1024;
/// o.deferred = true;
/// let mut set = reuseport::Set::new();
/// set.add_addr("127.0.0.1:0".parse().unwrap(), o).unwrap();
/// assert_eq!(set.listeners()[0].spec_text(), "127.0.0.1:0 backlog=1024 deferred");
/// ```
///
/// [`Set::add_addr`]: crate::Set::add_addr
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    pub backlog: i32,
    pub rcvbuf: Option<u32>,
    pub sndbuf: Option<u32>,
    /// TCP_DEFER_ACCEPT: wake the worker only when data has arrived.
    pub deferred: bool,
    /// TCP_FASTOPEN queue length.
    pub fastopen: Option<u32>,
    pub keepalive: Keepalive,
    /// IPV6_V6ONLY; `None` means nginx's default (on). Only meaningful for IPv6 addresses.
    pub ipv6only: Option<bool>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backlog: DEFAULT_BACKLOG,
            rcvbuf: None,
            sndbuf: None,
            deferred: false,
            fastopen: None,
            keepalive: Keepalive::Default,
            ipv6only: None,
        }
    }
}

impl Options {
    /// Whether `configure` has anything to set. Used to tell an operator that a listener
    /// is intentionally left as opened.
    pub fn needs_configure(&self) -> bool {
        self.rcvbuf.is_some()
            || self.sndbuf.is_some()
            || self.deferred
            || self.fastopen.is_some()
            || self.keepalive != Keepalive::Default
    }

    /// Checks the limits the C struct form can violate (the text form checks them while
    /// parsing). `family_is_v6` decides whether `ipv6only` may be given.
    pub fn validate(&self, family_is_v6: bool) -> Result<()> {
        if self.backlog < -1 || self.backlog == 0 {
            return Err(Error::invalid(format!(
                "backlog {} is invalid: use a positive number, or -1 for the system maximum",
                self.backlog
            )));
        }
        for (name, v) in [("rcvbuf", self.rcvbuf), ("sndbuf", self.sndbuf)] {
            if let Some(v) = v {
                if v == 0 || v > i32::MAX as u32 {
                    return Err(Error::invalid(format!("{name} {v} is out of range (1..{})", i32::MAX)));
                }
            }
        }
        if let Some(q) = self.fastopen {
            if q > i32::MAX as u32 {
                return Err(Error::invalid(format!("fastopen {q} is out of range")));
            }
        }
        if let Keepalive::On { idle, intvl, cnt } = self.keepalive {
            check_limit("keepidle", idle, MAX_TCP_KEEPIDLE)?;
            check_limit("keepintvl", intvl, MAX_TCP_KEEPINTVL)?;
            check_limit("keepcnt", cnt, MAX_TCP_KEEPCNT)?;
        }
        if self.ipv6only.is_some() && !family_is_v6 {
            return Err(Error::invalid("ipv6only applies to IPv6 addresses only"));
        }
        Ok(())
    }
}

fn check_limit(name: &str, v: Option<u32>, max: u32) -> Result<()> {
    match v {
        Some(v) if v == 0 || v > max => {
            Err(Error::invalid(format!("{name} {v} is out of range: Linux accepts 1..{max}")))
        }
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    pub host: Host,
    pub port: u16,
    pub options: Options,
}

/// Parses one listen spec. Every error quotes the offending token.
pub fn parse(text: &str) -> Result<ListenSpec> {
    parse_inner(text)
        .map_err(|e| Error::invalid(format!("invalid listen spec \"{}\": {}", text.escape_debug(), e.message)))
}

fn parse_inner(text: &str) -> Result<ListenSpec> {
    if let Some(c) = text.chars().find(|c| c.is_control() && !c.is_ascii_whitespace()) {
        return Err(Error::invalid(format!("contains the control character {:?}", c)));
    }
    // People paste lines from nginx.conf; tolerate the statement's terminator.
    let text = text.trim();
    let text = text.strip_suffix(';').unwrap_or(text);
    let mut tokens = text.split_ascii_whitespace();
    let addr = tokens
        .next()
        .ok_or_else(|| Error::invalid("empty: expected an address such as 127.0.0.1:8080, *:80 or 8080"))?;
    let (host, port) = parse_address(addr)?;
    let mut options = Options::default();
    let mut seen: Vec<&str> = Vec::new();
    for token in tokens {
        let (name, value) = match token.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (token, None),
        };
        if seen.contains(&name) {
            return Err(Error::invalid(format!("option \"{name}\" is given twice")));
        }
        seen.push(name);
        parse_option(&mut options, token, name, value)?;
    }
    let is_v6 = matches!(host, Host::Ip(IpAddr::V6(_)));
    if options.ipv6only.is_some() && !is_v6 {
        if let Host::Name(_) = host {
            // A name may resolve to IPv6; checked again after resolution.
        } else {
            return Err(Error::invalid(format!("\"ipv6only\" applies to IPv6 addresses only, not \"{addr}\"")));
        }
    }
    options.validate(is_v6 || matches!(host, Host::Name(_)))?;
    Ok(ListenSpec { host, port, options })
}

fn parse_address(addr: &str) -> Result<(Host, u16)> {
    if addr.starts_with("unix:") {
        return Err(Error::invalid(format!("\"{addr}\": unix sockets have no reuseport groups; use a TCP address")));
    }
    if let Some(rest) = addr.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| Error::invalid(format!("\"{addr}\": missing ']' after the IPv6 address")))?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| Error::invalid(format!("\"{ip}\" is not an IPv6 address")))?;
        let port = match after {
            "" => DEFAULT_PORT,
            _ => match after.strip_prefix(':') {
                Some(p) => parse_port(p)?,
                None => return Err(Error::invalid(format!("\"{after}\": expected ':port' after ']'"))),
            },
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }
    if addr.bytes().all(|b| b.is_ascii_digit()) {
        return Ok((Host::Any, parse_port(addr)?));
    }
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => {
            if h.contains(':') {
                return Err(Error::invalid(format!("\"{addr}\": write IPv6 addresses in brackets, as [::1]:8080")));
            }
            (h, parse_port(p)?)
        }
        None => (addr, DEFAULT_PORT),
    };
    if host == "*" {
        return Ok((Host::Any, port));
    }
    if host.is_empty() {
        return Err(Error::invalid(format!("\"{addr}\": missing host before ':'")));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((Host::Ip(IpAddr::V4(ip)), port));
    }
    if looks_like_ipv4(host) {
        return Err(Error::invalid(format!("\"{host}\" is not an IPv4 address")));
    }
    if !valid_hostname(host) {
        return Err(Error::invalid(format!("\"{host}\" is neither an address nor a host name")));
    }
    Ok((Host::Name(host.to_string()), port))
}

fn looks_like_ipv4(host: &str) -> bool {
    host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn valid_hostname(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
        })
}

fn parse_port(p: &str) -> Result<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(format!("port \"{p}\" is not a number")));
    }
    match p.parse::<u32>() {
        Ok(n) if n <= 65535 => Ok(n as u16),
        _ => Err(Error::invalid(format!("port \"{p}\" is out of range (0-65535; 0 lets the kernel choose)"))),
    }
}

fn parse_option<'a>(o: &mut Options, token: &str, name: &str, value: Option<&'a str>) -> Result<()> {
    let need = |v: Option<&'a str>| -> Result<&'a str> {
        v.ok_or_else(|| Error::invalid(format!("\"{token}\": option \"{name}\" needs a value ({name}=...)")))
    };
    let none = |v: Option<&str>| match v {
        Some(_) => Err(Error::invalid(format!("\"{token}\": option \"{name}\" takes no value"))),
        None => Ok(()),
    };
    match name {
        "backlog" => {
            let v = need(value)?;
            o.backlog = match v.parse::<i32>() {
                Ok(n) if n == -1 || n > 0 => n,
                _ => return Err(Error::invalid(format!("\"{token}\": backlog must be a positive number or -1"))),
            };
        }
        "rcvbuf" => o.rcvbuf = Some(parse_size(token, need(value)?)?),
        "sndbuf" => o.sndbuf = Some(parse_size(token, need(value)?)?),
        "deferred" => {
            none(value)?;
            o.deferred = true;
        }
        "fastopen" => {
            let v = need(value)?;
            o.fastopen = Some(match v.parse::<u32>() {
                Ok(n) if n <= i32::MAX as u32 => n,
                _ => return Err(Error::invalid(format!("\"{token}\": fastopen must be a queue length (a number)"))),
            });
        }
        "so_keepalive" => o.keepalive = parse_keepalive(token, need(value)?)?,
        "ipv6only" => {
            o.ipv6only = Some(match need(value)? {
                "on" => true,
                "off" => false,
                _ => return Err(Error::invalid(format!("\"{token}\": ipv6only is \"on\" or \"off\""))),
            });
        }
        // Every listener this library opens is a reuseport listener; accept the word so a
        // line copied from nginx.conf works as it is.
        "reuseport" => none(value)?,
        _ => {
            return Err(Error::invalid(format!(
                "unknown option \"{token}\" (known: backlog=, rcvbuf=, sndbuf=, deferred, fastopen=, so_keepalive=, ipv6only=)"
            )))
        }
    }
    Ok(())
}

/// nginx's size syntax: a number with an optional k/K, m/M or g/G suffix.
fn parse_size(token: &str, v: &str) -> Result<u32> {
    let bad = || Error::invalid(format!("\"{token}\": \"{v}\" is not a size (a number, with k or m for KiB or MiB)"));
    let (digits, mult) = match v.as_bytes().last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 1024u64),
        Some(b'm' | b'M') => (&v[..v.len() - 1], 1024 * 1024),
        Some(b'g' | b'G') => (&v[..v.len() - 1], 1024 * 1024 * 1024),
        _ => (v, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let size = n.checked_mul(mult).ok_or_else(bad)?;
    if size == 0 || size > i32::MAX as u64 {
        return Err(Error::invalid(format!("\"{token}\": size {v} is out of range (1 byte to 2g-1)")));
    }
    Ok(size as u32)
}

/// nginx's time syntax in seconds: a number with an optional s, m, h or d suffix.
fn parse_seconds(token: &str, v: &str) -> Result<u32> {
    let bad = || Error::invalid(format!("\"{token}\": \"{v}\" is not a time (seconds, or a number with s, m, h)"));
    let (digits, mult) = match v.as_bytes().last() {
        Some(b's') => (&v[..v.len() - 1], 1u64),
        Some(b'm') => (&v[..v.len() - 1], 60),
        Some(b'h') => (&v[..v.len() - 1], 3600),
        Some(b'd') => (&v[..v.len() - 1], 86400),
        _ => (v, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(mult).and_then(|s| u32::try_from(s).ok()).ok_or_else(bad)
}

fn parse_keepalive(token: &str, v: &str) -> Result<Keepalive> {
    match v {
        "on" => return Ok(Keepalive::On { idle: None, intvl: None, cnt: None }),
        "off" => return Ok(Keepalive::Off),
        _ => {}
    }
    let parts: Vec<&str> = v.split(':').collect();
    if parts.len() != 3 {
        return Err(Error::invalid(format!(
            "\"{token}\": so_keepalive is on, off, or keepidle:keepintvl:keepcnt (any part may be empty)"
        )));
    }
    let opt = |s: &str, f: &dyn Fn(&str) -> Result<u32>| if s.is_empty() { Ok(None) } else { f(s).map(Some) };
    let idle = opt(parts[0], &|s| parse_seconds(token, s))?;
    let intvl = opt(parts[1], &|s| parse_seconds(token, s))?;
    let cnt = opt(parts[2], &|s| {
        s.parse::<u32>().map_err(|_| Error::invalid(format!("\"{token}\": keepcnt \"{s}\" is not a number")))
    })?;
    if idle.is_none() && intvl.is_none() && cnt.is_none() {
        return Err(Error::invalid(format!("\"{token}\": give at least one of keepidle:keepintvl:keepcnt, or \"on\"")));
    }
    let k = Keepalive::On { idle, intvl, cnt };
    for (name, val, max) in [
        ("keepidle", idle, MAX_TCP_KEEPIDLE),
        ("keepintvl", intvl, MAX_TCP_KEEPINTVL),
        ("keepcnt", cnt, MAX_TCP_KEEPCNT),
    ] {
        check_limit(name, val, max).map_err(|e| Error::invalid(format!("\"{token}\": {}", e.message)))?;
    }
    Ok(k)
}

/// The canonical text of an opened listener: numeric address, the port actually bound, and
/// the options that differ from the defaults, in a fixed order. `parse` reads it back to the
/// same listener.
pub fn canonical(addr: &SocketAddr, o: &Options) -> String {
    let mut s = addr.to_string();
    if o.backlog != DEFAULT_BACKLOG {
        s.push_str(&format!(" backlog={}", o.backlog));
    }
    if let Some(v) = o.rcvbuf {
        s.push_str(&format!(" rcvbuf={}", v));
    }
    if let Some(v) = o.sndbuf {
        s.push_str(&format!(" sndbuf={}", v));
    }
    if o.deferred {
        s.push_str(" deferred");
    }
    if let Some(v) = o.fastopen {
        s.push_str(&format!(" fastopen={}", v));
    }
    match o.keepalive {
        Keepalive::Default => {}
        Keepalive::Off => s.push_str(" so_keepalive=off"),
        Keepalive::On { idle: None, intvl: None, cnt: None } => s.push_str(" so_keepalive=on"),
        Keepalive::On { idle, intvl, cnt } => {
            let f = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
            s.push_str(&format!(" so_keepalive={}:{}:{}", f(idle), f(intvl), f(cnt)));
        }
    }
    if addr.is_ipv6() {
        if let Some(v6only) = o.ipv6only {
            s.push_str(if v6only { " ipv6only=on" } else { " ipv6only=off" });
        }
    }
    s
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Any => f.write_str("*"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ListenSpec {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        let e = parse(s).expect_err(s);
        assert_eq!(e.errno, libc::EINVAL, "{s}");
        e.message
    }

    #[test]
    fn addresses_in_nginx_forms() {
        assert_eq!(ok("127.0.0.1:8080").host, Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(ok("127.0.0.1:8080").port, 8080);
        assert_eq!(ok("*:80").host, Host::Any);
        let bare = ok("8080");
        assert_eq!((bare.host, bare.port), (Host::Any, 8080));
        let v6 = ok("[::1]:8443");
        assert_eq!((v6.host, v6.port), (Host::Ip("::1".parse().unwrap()), 8443));
        let any6 = ok("[::]:443 ipv6only=on");
        assert_eq!(any6.options.ipv6only, Some(true));
        assert_eq!(ok("127.0.0.1").port, DEFAULT_PORT);
        assert_eq!(ok("[::1]").port, DEFAULT_PORT);
        assert_eq!(ok("localhost:8080").host, Host::Name("localhost".into()));
        assert_eq!(ok("127.0.0.1:0").port, 0);
        assert_eq!(ok("  127.0.0.1:81 reuseport;  ").port, 81);
    }

    #[test]
    fn every_option() {
        let s = ok("127.0.0.1:80 backlog=1024 rcvbuf=64k sndbuf=1m deferred fastopen=256 so_keepalive=30m::10");
        let o = s.options;
        assert_eq!(o.backlog, 1024);
        assert_eq!(o.rcvbuf, Some(65536));
        assert_eq!(o.sndbuf, Some(1048576));
        assert!(o.deferred);
        assert_eq!(o.fastopen, Some(256));
        assert_eq!(o.keepalive, Keepalive::On { idle: Some(1800), intvl: None, cnt: Some(10) });
        assert!(o.needs_configure());
        assert!(!ok("80").options.needs_configure());
        assert_eq!(ok("80 so_keepalive=on").options.keepalive, Keepalive::On { idle: None, intvl: None, cnt: None });
        assert_eq!(ok("80 so_keepalive=off").options.keepalive, Keepalive::Off);
        assert_eq!(
            ok("80 so_keepalive=:75s:").options.keepalive,
            Keepalive::On { idle: None, intvl: Some(75), cnt: None }
        );
        assert_eq!(ok("80 backlog=-1").options.backlog, -1);
        assert_eq!(ok("80 rcvbuf=4096").options.rcvbuf, Some(4096));
        assert_eq!(ok("[::]:80 ipv6only=off").options.ipv6only, Some(false));
    }

    #[test]
    fn errors_quote_the_offending_token() {
        assert!(err("127.0.0.1:8080 bogus").contains("unknown option \"bogus\""));
        assert!(err("127.0.0.1:8080 bogus=1").contains("unknown option \"bogus=1\""));
        assert!(err("127.0.0.1:99999").contains("port \"99999\" is out of range"));
        assert!(err("127.0.0.1:").contains("port \"\" is not a number"));
        assert!(err("127.0.0.1:8x").contains("port \"8x\" is not a number"));
        assert!(err("300.1.2.3:80").contains("\"300.1.2.3\" is not an IPv4 address"));
        assert!(err("[::1:80").contains("missing ']'"));
        assert!(err("[zz]:80").contains("\"zz\" is not an IPv6 address"));
        assert!(err("::1:80").contains("brackets"));
        assert!(err("[::1]80").contains("expected ':port'"));
        assert!(err("").contains("empty"));
        assert!(err("bad host!:80").contains("unknown option \"host!:80\""));
        assert!(err("ex!mple:80").contains("\"ex!mple\" is neither an address nor a host name"));
        assert!(err("unix:/tmp/x.sock").contains("unix sockets"));
        assert!(err(":80").contains("missing host"));
        assert!(err("80 backlog").contains("\"backlog\" needs a value"));
        assert!(err("80 backlog=0").contains("\"backlog=0\""));
        assert!(err("80 backlog=x").contains("\"backlog=x\""));
        assert!(err("80 deferred=1").contains("\"deferred\" takes no value"));
        assert!(err("80 rcvbuf=12q").contains("\"12q\" is not a size"));
        assert!(err("80 rcvbuf=4g").contains("out of range"));
        assert!(err("80 rcvbuf=0").contains("out of range"));
        assert!(err("80 fastopen=-3").contains("\"fastopen=-3\""));
        assert!(err("80 so_keepalive=yes").contains("\"so_keepalive=yes\""));
        assert!(err("80 so_keepalive=::").contains("at least one"));
        assert!(err("80 so_keepalive=99999::").contains("keepidle 99999 is out of range"));
        assert!(err("80 so_keepalive=::500").contains("keepcnt 500 is out of range"));
        assert!(err("80 so_keepalive=1x::").contains("\"1x\" is not a time"));
        assert!(err("127.0.0.1:80 ipv6only=on").contains("IPv6 addresses only"));
        assert!(err("[::]:80 ipv6only=maybe").contains("\"ipv6only=maybe\""));
        assert!(err("80 backlog=5 backlog=6").contains("\"backlog\" is given twice"));
        assert!(err("127.0.0.1:80\0").contains("control character"));
        assert!(err("127.0.0.1:80\0").contains("invalid listen spec \"127.0.0.1:80\\0\""));
    }

    #[test]
    fn canonical_text_round_trips() {
        for text in [
            "127.0.0.1:8080",
            "0.0.0.0:80 backlog=1024 rcvbuf=65536 sndbuf=8192 deferred fastopen=16 so_keepalive=1800::10",
            "[::1]:8443 so_keepalive=on",
            "[::]:443 so_keepalive=off ipv6only=off",
            "[::]:443 ipv6only=on",
        ] {
            let s = ok(text);
            let addr = match s.host {
                Host::Ip(ip) => SocketAddr::new(ip, s.port),
                Host::Any => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), s.port),
                Host::Name(_) => unreachable!(),
            };
            assert_eq!(canonical(&addr, &s.options), text);
            assert_eq!(ok(&canonical(&addr, &s.options)), s);
        }
    }

    #[test]
    fn struct_form_is_validated_like_text() {
        let mut o = Options::default();
        assert!(o.validate(false).is_ok());
        o.backlog = 0;
        assert!(o.validate(false).unwrap_err().message.contains("backlog 0"));
        let o = Options { ipv6only: Some(true), ..Options::default() };
        assert!(o.validate(false).is_err());
        assert!(o.validate(true).is_ok());
        let o = Options { keepalive: Keepalive::On { idle: None, intvl: None, cnt: Some(1000) }, ..Options::default() };
        assert!(o.validate(false).unwrap_err().message.contains("keepcnt 1000"));
        let o = Options { rcvbuf: Some(0), ..Options::default() };
        assert!(o.validate(false).is_err());
    }
}
