//! Random sequences of C API calls on up to four sets, with real sockets (loopback, port 0
//! or one fixed port the sets share): the calls a host makes, in any order, with good and
//! bad arguments. Checked after every call and every sequence:
//!
//! - nothing crashes (a panic crossing the boundary would abort: the fuzzer reports it);
//! - every negative return leaves a message from *that* call in reuseport_last_error()
//!   (a sentinel failure of another function is recorded before each call, so a stale
//!   message cannot pass), and no call answers -REUSEPORT_EINTERNAL (a caught panic);
//! - every log message is non-empty;
//! - once every set is freed, this process holds exactly the fds and the BPF-map
//!   mappings it held before the sequence.
//!
//! The calls go through the exported `extern "C"` symbols of the library's rlib: the same
//! boundary a C host crosses, with the Rust side instrumented by the fuzzer. Only NULL or
//! live set pointers are passed (a dangling pointer is the caller's bug, not checkable).
//! Specs are built from fixed addresses plus fuzzed option text, never from fuzzed host
//! names: a name would be a DNS query (the parser itself is `spec_parse`'s job).
//!
//! Run it in a private network namespace (scripts/fuzz.sh does): it binds loopback ports.
#![no_main]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::mem::size_of;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

// The library's rlib must be linked for its #[no_mangle] exports to resolve.
use reuseport as _;

type Set = c_void;
type AcceptFn = extern "C" fn(c_int, usize, *mut c_void) -> c_int;
type LogFn = extern "C" fn(c_int, *const c_char, *mut c_void);

extern "C" {
    fn reuseport_set_new() -> *mut Set;
    fn reuseport_set_free(set: *mut Set);
    fn reuseport_set_add(set: *mut Set, spec: *const c_char) -> c_int;
    fn reuseport_set_get_count(set: *const Set) -> c_int;
    fn reuseport_listener_get_fd(set: *const Set, index: usize) -> c_int;
    fn reuseport_listener_get_spec(set: *const Set, index: usize, buf: *mut c_char, len: usize) -> c_int;
    fn reuseport_set_get_role(set: *const Set) -> c_int;
    fn reuseport_role_name(role: c_int) -> *const c_char;
    fn reuseport_version() -> *const c_char;
    fn reuseport_listen_options_init(opts: *mut c_void, sz: usize) -> c_int;
    fn reuseport_set_add_addr(
        set: *mut Set,
        addr: *const libc::sockaddr,
        len: libc::socklen_t,
        opts: *const c_void,
    ) -> c_int;
    fn reuseport_set_inherit(next: *mut Set, prev: *const Set) -> c_int;
    fn reuseport_master_open(set: *mut Set) -> c_int;
    fn reuseport_master_release(set: *mut Set) -> c_int;
    fn reuseport_worker_adopt(set: *mut Set) -> c_int;
    fn reuseport_worker_bind(set: *mut Set) -> c_int;
    fn reuseport_single_open(set: *mut Set) -> c_int;
    fn reuseport_set_set_drain(set: *mut Set, grace_ms: c_uint, max_ms: c_uint, flags: c_uint) -> c_int;
    fn reuseport_retire(set: *mut Set, on_accept: Option<AcceptFn>, user: *mut c_void) -> c_int;
    fn reuseport_set_get_retire_fd(set: *const Set) -> c_int;
    fn reuseport_set_set_health_threshold(set: *mut Set, ms: c_uint) -> c_int;
    fn reuseport_heartbeat(set: *const Set) -> c_int;
    fn reuseport_watch(set: *const Set) -> c_int;
    fn reuseport_listener_is_steered(set: *const Set, index: usize) -> c_int;
    fn reuseport_listener_get_slots(
        set: *const Set,
        index: usize,
        out: *mut c_void,
        cap: usize,
        slot_size: usize,
    ) -> c_int;
    fn reuseport_master_reclaim(set: *const Set) -> c_int;
    fn reuseport_set_set_strategy(set: *mut Set, strategy: c_int) -> c_int;
    fn reuseport_listener_get_strategy(set: *const Set, index: usize) -> c_int;
    fn reuseport_strategy_name(strategy: c_int) -> *const c_char;
    fn reuseport_strategy_parse(name: *const c_char) -> c_int;
    fn reuseport_set_set_program_fd(set: *mut Set, fd: c_int) -> c_int;
    fn reuseport_set_get_program_fd(set: *const Set) -> c_int;
    fn reuseport_probe(out: *mut c_void, size: usize, notes: *mut c_char, notes_len: usize) -> c_int;
    fn reuseport_log_set_callback(cb: Option<LogFn>, user: *mut c_void, max_level: c_int);
    fn reuseport_last_error() -> *const c_char;
}

/// -REUSEPORT_EINTERNAL: a panic caught at the boundary, i.e. a bug.
const EINTERNAL: c_int = 4000;
/// A port the sets may share, so that two sets join one group (same uid).
const SHARED_PORT: u16 = 18080;
/// Room for any struct the calls fill (options, probe info, slots).
const BUF: usize = 512;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    V4Any,
    V4Shared,
    V6Any,
    V6Shared,
    Star,
    PortOnly,
    Localhost,
    Privileged,
    Unix,
    Garbage,
}

impl Addr {
    fn text(self) -> &'static str {
        match self {
            Addr::V4Any => "127.0.0.1:0",
            Addr::V4Shared => "127.0.0.1:18080",
            Addr::V6Any => "[::1]:0",
            Addr::V6Shared => "[::1]:18080",
            Addr::Star => "*:0",
            Addr::PortOnly => "0",
            // /etc/hosts answers it; no DNS.
            Addr::Localhost => "localhost:0",
            Addr::Privileged => "127.0.0.1:80",
            Addr::Unix => "unix:/tmp/reuseport-fuzz.sock",
            Addr::Garbage => "[::1",
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SockAddr {
    V4 { shared: bool },
    V6 { shared: bool, scope: u32 },
    WrongFamily,
    Short,
    Null,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum OptsSize {
    Exact,
    Smaller(u8),
    LargerZeroTail(u8),
    LargerDirtyTail(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct OptFields {
    backlog: i32,
    rcvbuf: i32,
    sndbuf: i32,
    deferred: i32,
    fastopen: i32,
    keepalive: i32,
    keepidle: i32,
    keepintvl: i32,
    keepcnt: i32,
    ipv6only: i32,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ProgramFd {
    /// Another set's program (borrowed from it).
    OfSet(u8),
    /// Another set's listen socket: not a program.
    ListenerOf(u8, u8),
    Stdin,
    Negative,
    Closed,
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    New,
    Free(u8),
    Add(u8, Addr, String),
    AddRaw(u8, Vec<u8>),
    AddAddr(u8, SockAddr, Option<(OptsSize, Option<OptFields>)>),
    OptionsInit(u16),
    Inherit(u8, u8),
    MasterOpen(u8),
    Release(u8),
    Adopt(u8),
    WorkerBind(u8),
    SingleOpen(u8),
    SetDrain(u8, u32, u32, u32),
    Retire(u8, Option<bool>),
    RetireFd(u8),
    SetHealth(u8, u32),
    Heartbeat(u8),
    Watch(u8),
    IsSteered(u8, u8),
    Slots(u8, u8, u8, u8, bool),
    Reclaim(u8),
    SetStrategy(u8, i32),
    GetStrategy(u8, u8),
    StrategyName(i32),
    StrategyParse(String),
    SetProgramFd(u8, ProgramFd),
    GetProgramFd(u8),
    Count(u8),
    GetFd(u8, u8),
    GetSpec(u8, u8, u16, bool),
    Role(u8),
    RoleName(i32),
    Probe(u16, u16, bool),
}

#[derive(Arbitrary, Debug)]
struct Sequence {
    ops: Vec<Op>,
}

/// Up to four live sets; index 0..4 picks one (NULL where none is), 4 and above pass NULL.
struct Sets([*mut Set; 4]);

impl Sets {
    fn pick(&self, i: u8) -> *mut Set {
        self.0.get(i as usize % 6).copied().unwrap_or(std::ptr::null_mut())
    }
}

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated (the API's contract).
    unsafe { CStr::from_ptr(reuseport_last_error()) }.to_string_lossy().into_owned()
}

/// Records a failure of another function, so that a call that fails without recording
/// its own message is caught.
fn plant_sentinel() {
    // SAFETY: a NUL-terminated string.
    let rc = unsafe { reuseport_strategy_parse(c"fuzz-sentinel".as_ptr()) };
    assert_eq!(rc, -libc::EINVAL);
    assert!(last_error().starts_with("reuseport_strategy_parse: "), "{}", last_error());
}

/// The check after each call: a negative return is a failure of `function`, with words.
fn checked(function: &str, rc: c_int) -> c_int {
    if rc < 0 {
        let msg = last_error();
        assert!(rc != -EINTERNAL, "{function} panicked inside: {msg}");
        let prefix = format!("{function}: ");
        assert!(
            msg.starts_with(&prefix) && msg.len() > prefix.len() + 3,
            "{function} returned {rc} with the message {msg:?}"
        );
    }
    rc
}

fn static_str(p: *const c_char, what: &str) {
    assert!(!p.is_null(), "{what} returned NULL");
    // SAFETY: non-NULL and NUL-terminated (static strings of the library).
    let s = unsafe { CStr::from_ptr(p) };
    assert!(!s.to_bytes().is_empty(), "{what} returned an empty string");
}

extern "C" fn on_log(_level: c_int, message: *const c_char, _user: *mut c_void) {
    assert!(!message.is_null());
    // SAFETY: valid during the call (the API's contract).
    let m = unsafe { CStr::from_ptr(message) };
    assert!(!m.to_bytes().is_empty(), "an empty log message");
}

/// Takes each connection (closing it: the fuzzer serves nothing) or refuses it.
extern "C" fn on_accept(fd: c_int, _index: usize, user: *mut c_void) -> c_int {
    if user.is_null() {
        // SAFETY: the fd is ours now (the callback's contract).
        unsafe { libc::close(fd) };
        0
    } else {
        1
    }
}

/// What must be back where it was once every set is freed.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    fds: Vec<String>,
    bpf_mappings: usize,
}

fn held() -> Held {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok())
        .map(|e| {
            let target = std::fs::read_link(e.path()).map(|t| t.display().to_string()).unwrap_or_default();
            format!("{} -> {}", e.file_name().to_string_lossy(), target)
        })
        .collect();
    fds.sort();
    // The read_dir's own fd differs from call to call only in what it points at.
    fds.retain(|f| !f.contains("/proc/") || !f.ends_with("/fd"));
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    Held { fds, bpf_mappings: maps.lines().filter(|l| l.contains("bpf-map")).count() }
}

fn sockaddr(which: SockAddr) -> (libc::sockaddr_storage, libc::socklen_t, bool) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let port = |shared: bool| if shared { SHARED_PORT.to_be() } else { 0 };
    let len = match which {
        SockAddr::V4 { shared } => v4(&mut ss, port(shared), size_of::<libc::sockaddr_in>()),
        SockAddr::Short => v4(&mut ss, 0, size_of::<libc::sockaddr_in>() - 4),
        SockAddr::V6 { shared, scope } => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = port(shared);
            sin6.sin6_addr.s6_addr[15] = 1;
            sin6.sin6_scope_id = scope % 4;
            size_of::<libc::sockaddr_in6>()
        }
        SockAddr::WrongFamily => {
            ss.ss_family = libc::AF_UNIX as libc::sa_family_t;
            size_of::<libc::sockaddr_un>()
        }
        SockAddr::Null => return (ss, 0, true),
    };
    (ss, len as libc::socklen_t, false)
}

/// 127.0.0.1 with `port` (network order) into `ss`; returns `len`.
fn v4(ss: &mut libc::sockaddr_storage, port: u16, len: usize) -> usize {
    // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
    let sin = unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in) };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = port;
    sin.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
    len
}

/// Options filled by _init and then overwritten field by field, with the size the fuzzer
/// chose. Returns the buffer (u64s for alignment).
fn options(size: OptsSize, fields: Option<OptFields>) -> [u64; BUF / 8] {
    let mut buf = [0u64; BUF / 8];
    let p = buf.as_mut_ptr() as *mut c_void;
    // The struct: size_t sz, then ten ints.
    let exact = size_of::<usize>() + 10 * size_of::<c_int>();
    // SAFETY: buf has BUF writable bytes >= exact.
    assert_eq!(unsafe { reuseport_listen_options_init(p, exact) }, 0);
    if let Some(f) = fields {
        let ints = [
            f.backlog,
            f.rcvbuf,
            f.sndbuf,
            f.deferred,
            f.fastopen,
            f.keepalive,
            f.keepidle,
            f.keepintvl,
            f.keepcnt,
            f.ipv6only,
        ];
        // SAFETY: the ten ints follow the size_t inside buf.
        unsafe {
            let at = (p as *mut u8).add(size_of::<usize>()) as *mut c_int;
            for (k, v) in ints.iter().enumerate() {
                at.add(k).write_unaligned(*v);
            }
        }
    }
    let sz = match size {
        OptsSize::Exact => exact,
        OptsSize::Smaller(n) => exact.saturating_sub(1 + n as usize % exact),
        OptsSize::LargerZeroTail(n) => exact + 1 + n as usize % (BUF - exact - 1),
        OptsSize::LargerDirtyTail(n) => {
            let sz = exact + 1 + n as usize % (BUF - exact - 1);
            // SAFETY: sz - 1 < BUF.
            unsafe { *(p as *mut u8).add(sz - 1) = 0x5a };
            sz
        }
    };
    // SAFETY: the size_t at the start of buf.
    unsafe { (p as *mut usize).write(sz) };
    buf
}

fn run(seq: &Sequence) {
    let mut sets = Sets([std::ptr::null_mut(); 4]);
    for op in seq.ops.iter().take(64) {
        plant_sentinel();
        step(&mut sets, op);
    }
    for s in sets.0 {
        // SAFETY: NULL or a live set made by reuseport_set_new.
        unsafe { reuseport_set_free(s) };
    }
}

fn step(sets: &mut Sets, op: &Op) {
    // SAFETY (every call below): set pointers are NULL or live sets; buffers are local and
    // at least as large as the lengths passed with them; strings are NUL-terminated.
    unsafe {
        match op {
            Op::New => {
                if let Some(slot) = sets.0.iter_mut().find(|s| s.is_null()) {
                    *slot = reuseport_set_new();
                    assert!(!slot.is_null(), "reuseport_set_new returned NULL");
                }
            }
            Op::Free(i) => {
                if let Some(slot) = sets.0.get_mut(*i as usize % 4) {
                    reuseport_set_free(*slot);
                    *slot = std::ptr::null_mut();
                }
            }
            Op::Add(i, addr, opts) => {
                let text = format!("{} {}", addr.text(), opts);
                if let Ok(c) = CString::new(text) {
                    checked("reuseport_set_add", reuseport_set_add(sets.pick(*i), c.as_ptr()));
                }
            }
            Op::AddRaw(i, bytes) => {
                // Raw bytes (invalid UTF-8 included) after a fixed address: never a host name.
                let mut text = b"127.0.0.1:0 ".to_vec();
                text.extend(bytes.iter().filter(|b| **b != 0));
                let c = CString::new(text).expect("NULs filtered");
                checked("reuseport_set_add", reuseport_set_add(sets.pick(*i), c.as_ptr()));
            }
            Op::AddAddr(i, which, opts) => {
                let (ss, len, null) = sockaddr(*which);
                let addr = if null { std::ptr::null() } else { &ss as *const _ as *const libc::sockaddr };
                let buf = opts.map(|(size, fields)| options(size, fields));
                let o = buf.as_ref().map_or(std::ptr::null(), |b| b.as_ptr() as *const c_void);
                checked("reuseport_set_add_addr", reuseport_set_add_addr(sets.pick(*i), addr, len, o));
            }
            Op::OptionsInit(sz) => {
                let mut buf = [0u64; BUF / 8];
                let rc = reuseport_listen_options_init(buf.as_mut_ptr() as *mut c_void, *sz as usize % BUF);
                checked("reuseport_listen_options_init", rc);
            }
            Op::Inherit(a, b) => {
                checked("reuseport_set_inherit", reuseport_set_inherit(sets.pick(*a), sets.pick(*b)));
            }
            Op::MasterOpen(i) => {
                checked("reuseport_master_open", reuseport_master_open(sets.pick(*i)));
            }
            Op::Release(i) => {
                checked("reuseport_master_release", reuseport_master_release(sets.pick(*i)));
            }
            Op::Adopt(i) => {
                checked("reuseport_worker_adopt", reuseport_worker_adopt(sets.pick(*i)));
            }
            Op::WorkerBind(i) => {
                checked("reuseport_worker_bind", reuseport_worker_bind(sets.pick(*i)));
            }
            Op::SingleOpen(i) => {
                checked("reuseport_single_open", reuseport_single_open(sets.pick(*i)));
            }
            Op::SetDrain(i, g, m, f) => {
                // Bounded so that a retire the fuzzer starts cannot make it wait: it never
                // sleeps, but keep the numbers in a range a host would use.
                let rc = reuseport_set_set_drain(sets.pick(*i), g % 2000, m % 2000, f % 4);
                checked("reuseport_set_set_drain", rc);
            }
            Op::Retire(i, cb) => {
                let (f, user): (Option<AcceptFn>, *mut c_void) = match cb {
                    None => (None, std::ptr::null_mut()),
                    Some(take) => (Some(on_accept), if *take { std::ptr::null_mut() } else { 1 as *mut c_void }),
                };
                checked("reuseport_retire", reuseport_retire(sets.pick(*i), f, user));
            }
            Op::RetireFd(i) => {
                checked("reuseport_set_get_retire_fd", reuseport_set_get_retire_fd(sets.pick(*i)));
            }
            Op::SetHealth(i, ms) => {
                checked("reuseport_set_set_health_threshold", reuseport_set_set_health_threshold(sets.pick(*i), *ms));
            }
            Op::Heartbeat(i) => {
                checked("reuseport_heartbeat", reuseport_heartbeat(sets.pick(*i)));
            }
            Op::Watch(i) => {
                checked("reuseport_watch", reuseport_watch(sets.pick(*i)));
            }
            Op::IsSteered(i, k) => {
                checked("reuseport_listener_is_steered", reuseport_listener_is_steered(sets.pick(*i), *k as usize % 5));
            }
            Op::Slots(i, k, cap, size, null) => {
                let mut buf = [0u64; BUF / 8];
                let slot_size = *size as usize % 64;
                let cap = if slot_size == 0 { 0 } else { (*cap as usize % 8).min(BUF / slot_size) };
                let out = if *null { std::ptr::null_mut() } else { buf.as_mut_ptr() as *mut c_void };
                let rc = reuseport_listener_get_slots(sets.pick(*i), *k as usize % 5, out, cap, slot_size);
                checked("reuseport_listener_get_slots", rc);
            }
            Op::Reclaim(i) => {
                checked("reuseport_master_reclaim", reuseport_master_reclaim(sets.pick(*i)));
            }
            Op::SetStrategy(i, s) => {
                checked("reuseport_set_set_strategy", reuseport_set_set_strategy(sets.pick(*i), *s % 7));
            }
            Op::GetStrategy(i, k) => {
                checked(
                    "reuseport_listener_get_strategy",
                    reuseport_listener_get_strategy(sets.pick(*i), *k as usize % 5),
                );
            }
            Op::StrategyName(s) => static_str(reuseport_strategy_name(*s), "reuseport_strategy_name"),
            Op::StrategyParse(name) => {
                if let Ok(c) = CString::new(name.as_str()) {
                    checked("reuseport_strategy_parse", reuseport_strategy_parse(c.as_ptr()));
                }
            }
            Op::SetProgramFd(i, which) => {
                let fd = match which {
                    ProgramFd::OfSet(j) => reuseport_set_get_program_fd(sets.pick(*j)),
                    ProgramFd::ListenerOf(j, k) => reuseport_listener_get_fd(sets.pick(*j), *k as usize % 3),
                    ProgramFd::Stdin => 0,
                    ProgramFd::Negative => -1,
                    // Far above anything this process opens.
                    ProgramFd::Closed => 1_000_000,
                };
                plant_sentinel();
                checked("reuseport_set_set_program_fd", reuseport_set_set_program_fd(sets.pick(*i), fd));
            }
            Op::GetProgramFd(i) => {
                checked("reuseport_set_get_program_fd", reuseport_set_get_program_fd(sets.pick(*i)));
            }
            Op::Count(i) => {
                checked("reuseport_set_get_count", reuseport_set_get_count(sets.pick(*i)));
            }
            Op::GetFd(i, k) => {
                checked("reuseport_listener_get_fd", reuseport_listener_get_fd(sets.pick(*i), *k as usize % 5));
            }
            Op::GetSpec(i, k, len, null) => {
                let mut buf = [0u8; BUF];
                let len = *len as usize % BUF;
                let p = if *null { std::ptr::null_mut() } else { buf.as_mut_ptr() as *mut c_char };
                let rc = reuseport_listener_get_spec(sets.pick(*i), *k as usize % 5, p, len);
                checked("reuseport_listener_get_spec", rc);
                if rc >= 0 && !p.is_null() && len > 0 {
                    let written = CStr::from_bytes_until_nul(&buf).expect("NUL-terminated");
                    assert_eq!(written.to_bytes().len(), (rc as usize).min(len - 1), "snprintf-style length");
                }
            }
            Op::Role(i) => {
                let rc = checked("reuseport_set_get_role", reuseport_set_get_role(sets.pick(*i)));
                if rc >= 0 {
                    static_str(reuseport_role_name(rc), "reuseport_role_name");
                }
            }
            Op::RoleName(r) => static_str(reuseport_role_name(*r), "reuseport_role_name"),
            Op::Probe(size, notes_len, null_notes) => {
                let mut out = [0u64; BUF / 8];
                let mut notes = [0u8; BUF];
                let notes_len = *notes_len as usize % BUF;
                let n = if *null_notes { std::ptr::null_mut() } else { notes.as_mut_ptr() as *mut c_char };
                let rc = reuseport_probe(out.as_mut_ptr() as *mut c_void, *size as usize % BUF, n, notes_len);
                checked("reuseport_probe", rc);
            }
        }
    }
}

fuzz_target!(
    init: {
        // SAFETY: a callback that only reads its message.
        unsafe { reuseport_log_set_callback(Some(on_log), std::ptr::null_mut(), 7) };
        // SAFETY: a static string.
        static_str(unsafe { reuseport_version() }, "reuseport_version");
    },
    |seq: Sequence| {
        let before = held();
        run(&seq);
        let after = held();
        assert_eq!(before, after, "the sets left fds or BPF-map mappings behind");
    }
);
