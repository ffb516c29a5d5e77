//! bpf(2): loading reuseport programs, creating and updating maps, reading a program's
//! info, attaching a program to a reuseport group. No libbpf, no clang at build time: the
//! programs are assembled in Rust (the migration program here, the steering program in
//! steering/program.rs).
//!
//! The migration program is `r0 = SK_PASS; exit`. Loaded with the select-or-migrate attach type, its
//! presence in a reuseport group makes the kernel migrate the queue of a closing listener
//! to a surviving member (net/core/sock_reuseport.c, reuseport_migrate_sock()); returning
//! SK_PASS without selecting keeps the kernel's hash spreading.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

const BPF_PROG_LOAD: libc::c_long = 5;
pub(crate) const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_SK_REUSEPORT_SELECT_OR_MIGRATE: u32 = 40;
/// SO_ATTACH_REUSEPORT_EBPF from asm-generic/socket.h.
pub(crate) const SO_ATTACH_REUSEPORT_EBPF: i32 = 52;
pub(crate) const SK_PASS: i32 = 1;

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Insn {
    pub code: u8,
    pub regs: u8, // dst_reg:4 | src_reg:4
    pub off: i16,
    pub imm: i32,
}

const BPF_ALU64_MOV_K: u8 = 0x07 | 0xb0; // BPF_ALU64 | BPF_MOV | BPF_K
const BPF_JMP_EXIT: u8 = 0x05 | 0x90; // BPF_JMP | BPF_EXIT

/// The prefix of union bpf_attr used by BPF_PROG_LOAD, up to expected_attach_type. The
/// kernel accepts a shorter attr when the rest would be zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// One bpf(2) call with `attr` as its argument block.
fn sys_bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<i64> {
    // SAFETY: attr points at live memory of the declared size for the whole call; the
    // kernel copies it in (and out, for the commands that write) before returning.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>() as u32) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads the select-or-migrate program. Needs CAP_BPF (or CAP_SYS_ADMIN); an
/// unprivileged process gets EPERM, but may attach a program fd it inherited.
pub(crate) fn load_migrate_program() -> io::Result<OwnedFd> {
    let insns = [
        Insn { code: BPF_ALU64_MOV_K, regs: 0, off: 0, imm: SK_PASS },
        Insn { code: BPF_JMP_EXIT, regs: 0, off: 0, imm: 0 },
    ];
    load_program(&insns, PROGRAM_NAME)
}

/// Loads a reuseport program of the select-or-migrate attach type.
pub(crate) fn load_program(insns: &[Insn], program_name: &[u8]) -> io::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..program_name.len()].copy_from_slice(program_name);
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SK_REUSEPORT,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_SK_REUSEPORT_SELECT_OR_MIGRATE,
        ..Default::default()
    };
    let fd = match sys_bpf(BPF_PROG_LOAD, &attr) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() != Some(libc::EPERM) && std::env::var_os("REUSEPORT_BPF_LOG").is_some() => {
            // REUSEPORT_BPF_LOG=N: load again with the verifier's log and pass on its last N
            // lines (default 40), for whoever changes the program.
            let mut log = vec![0u8; 1 << 20];
            let retry =
                ProgLoadAttr { log_level: 1, log_size: log.len() as u32, log_buf: log.as_mut_ptr() as u64, ..attr };
            let _ = sys_bpf(BPF_PROG_LOAD, &retry);
            let text = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
            let keep = std::env::var("REUSEPORT_BPF_LOG").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(keep)..].join("\n");
            crate::log::emit(
                crate::log::Level::Warn,
                &format!("eBPF program load failed ({e}); verifier log:\n{tail}"),
            );
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    // The kernel creates program and map fds with O_CLOEXEC (bpf_prog_new_fd), as the
    // library promises for every fd it makes.
    // SAFETY: fd was just returned by the kernel and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
pub(crate) const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub(crate) const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
/// The map's memory can be mmap()ed, and is shared by every process that maps it.
pub(crate) const BPF_F_MMAPABLE: u32 = 1 << 10;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    /// map_ifindex, the BTF fields, map_extra...: zero. Passed so that the whole block the
    /// kernel (and valgrind) may read is initialised; the kernel accepts a longer block
    /// whose tail is zero.
    rest: [u32; 16],
}

/// Creates a map with u32 keys. Needs CAP_BPF.
pub(crate) fn create_map(
    map_type: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    name: &[u8],
) -> io::Result<OwnedFd> {
    let mut map_name = [0u8; 16];
    map_name[..name.len()].copy_from_slice(name);
    let attr = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size,
        max_entries,
        map_flags: flags,
        map_name,
        ..Default::default()
    };
    let fd = sys_bpf(BPF_MAP_CREATE, &attr)?;
    // SAFETY: fd was just returned by the kernel and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Puts listen socket `sock` into slot `key` of a reuseport sockarray. No privilege is
/// needed beyond holding both fds; the kernel removes the socket from the map itself when
/// it stops listening.
pub(crate) fn sockarray_set(map: BorrowedFd<'_>, key: u32, sock: BorrowedFd<'_>) -> io::Result<()> {
    let value: u64 = sock.as_raw_fd() as u64;
    let attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u64 as u64,
        flags: 0, // BPF_ANY
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &attr).map(drop)
}

/// Attaches `prog` to the reuseport group of `sock`. The program belongs to the group:
/// sockets that join later run it too, and attaching again replaces it for the whole
/// group. Needs no privilege when the caller holds the program fd.
pub(crate) fn attach(sock: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    super::socket::setsockopt_int(sock, libc::SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, prog.as_raw_fd())
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// The name the library loads its program under; how a handed-over fd is recognised.
const PROGRAM_NAME: &[u8] = b"reuseport_mig";

/// The head of struct bpf_prog_info, up to the program's name.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn prog_info(fd: RawFd) -> io::Result<ProgInfoHead> {
    let mut info = ProgInfoHead::default();
    let attr = InfoByFdAttr {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of::<ProgInfoHead>() as u32,
        info: &mut info as *mut ProgInfoHead as u64,
    };
    // The kernel writes at most info_len bytes into info, which outlives the call.
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr).map(|_| info)
}

/// Takes a program fd handed over by the caller (inherited across fork or exec): checks it
/// is the library's migration program and keeps a close-on-exec duplicate of it.
///
/// The kernel does not report a program's attach type, and a reuseport program loaded
/// for plain selection would attach fine but migrate nothing; the library therefore
/// accepts only a program loaded under its own name.
pub(crate) fn adopt_program(fd: RawFd) -> Result<OwnedFd, String> {
    if !super::fd::is_open(fd) {
        return Err(format!("fd {fd} is not open"));
    }
    let info = prog_info(fd).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL | libc::EBADF) => format!("fd {fd} is not an eBPF program"),
        _ => format!(
            "fd {fd}: cannot read the eBPF program's info: {}",
            crate::error::strerror(e.raw_os_error().unwrap_or(libc::EIO))
        ),
    })?;
    if info.prog_type != BPF_PROG_TYPE_SK_REUSEPORT {
        return Err(format!("fd {fd} is an eBPF program of type {}, not a reuseport program", info.prog_type));
    }
    let name_len = info.name.iter().position(|&b| b == 0).unwrap_or(info.name.len());
    if &info.name[..name_len] != PROGRAM_NAME {
        return Err(format!(
            "fd {fd} is a reuseport program named \"{}\", not the library's migration program (pass the fd of reuseport_set_get_program_fd())",
            String::from_utf8_lossy(&info.name[..name_len])
        ));
    }
    super::fd::dup_cloexec(fd).map_err(|e| format!("fd {fd}: {e}"))
}
