//! The library's reuseport eBPF program, assembled here and loaded with bpf(2): no libbpf,
//! no clang at build time.
//!
//! The program is `r0 = SK_PASS; exit`. Loaded with the select-or-migrate attach type, its
//! presence in a reuseport group makes the kernel migrate the queue of a closing listener
//! to a surviving member (net/core/sock_reuseport.c, reuseport_migrate_sock()); returning
//! SK_PASS without selecting keeps the kernel's hash spreading.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_SK_REUSEPORT_SELECT_OR_MIGRATE: u32 = 40;
/// SO_ATTACH_REUSEPORT_EBPF from asm-generic/socket.h.
pub const SO_ATTACH_REUSEPORT_EBPF: i32 = 52;
const SK_PASS: i32 = 1;

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8, // dst_reg:4 | src_reg:4
    off: i16,
    imm: i32,
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

/// Loads the select-or-migrate program. Needs CAP_BPF (or CAP_SYS_ADMIN); an
/// unprivileged process gets EPERM, but may attach a program fd it inherited.
pub fn load_migrate_program() -> io::Result<OwnedFd> {
    let insns = [
        Insn { code: BPF_ALU64_MOV_K, regs: 0, off: 0, imm: SK_PASS },
        Insn { code: BPF_JMP_EXIT, regs: 0, off: 0, imm: 0 },
    ];
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..PROGRAM_NAME.len()].copy_from_slice(PROGRAM_NAME);
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SK_REUSEPORT,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_SK_REUSEPORT_SELECT_OR_MIGRATE,
        ..Default::default()
    };
    // SAFETY: attr points at live memory of the declared size for the whole call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel creates program fds with O_CLOEXEC (bpf_prog_new_fd), as the library
    // promises for every fd it makes.
    // SAFETY: fd was just returned by the kernel and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches `prog` to the reuseport group of `sock`. The program belongs to the group:
/// sockets that join later run it too, and attaching again replaces it for the whole
/// group. Needs no privilege when the caller holds the program fd.
pub fn attach(sock: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    crate::socket::setsockopt_int(sock, libc::SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, prog.as_raw_fd())
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
    // SAFETY: attr and info are live for the call; the kernel writes at most info_len bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoByFdAttr,
            std::mem::size_of::<InfoByFdAttr>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(info)
    }
}

/// Takes a program fd handed over by the caller (inherited across fork or exec): checks it
/// is the library's migration program and keeps a close-on-exec duplicate of it.
///
/// The kernel does not report a program's attach type, and a reuseport program loaded
/// for plain selection would attach fine but migrate nothing; the library therefore
/// accepts only a program loaded under its own name.
pub fn adopt_program(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: fcntl(F_GETFD) on any int only reports whether it is open.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
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
            "fd {fd} is a reuseport program named \"{}\", not the library's migration program (pass the fd of reuseport_set_program_fd())",
            String::from_utf8_lossy(&info.name[..name_len])
        ));
    }
    // SAFETY: F_DUPFD_CLOEXEC on an open fd returns a new fd we own.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(format!("fd {fd}: {}", io::Error::last_os_error()));
    }
    // SAFETY: dup is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}
