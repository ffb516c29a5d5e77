//! A userspace eBPF interpreter for the instructions the steering program uses, with the
//! helpers it calls mocked: map_lookup_elem returns the slot table (in shared memory,
//! the very Table the library's writers maintain), sk_select_reuseport asks the test
//! whether a slot's socket is there, and ktime_get_coarse_ns returns the test's clock. So the program's selection rule is tested without
//! root, instruction by instruction, as the kernel would run it. Tests only.

use std::sync::atomic::Ordering;

use super::asm::*;
use super::program::{CTX_HASH, HELPER_KTIME_GET_COARSE_NS, HELPER_MAP_LOOKUP_ELEM, HELPER_SK_SELECT_REUSEPORT};
use super::slots::Table;
use crate::sys::bpf::Insn;

// Pointers are tagged with their region in the upper bits.
const REGION: u64 = 1 << 40;
const STACK: u64 = REGION;
const CTX: u64 = 2 * REGION;
const TABLE_VALUE: u64 = 3 * REGION;
const MAP_FD: u64 = 4 * REGION;
const STACK_SIZE: usize = 512;
const CTX_SIZE: usize = 64;
const ENOENT: u64 = (-2i64) as u64;

/// The world the program runs in.
pub(crate) struct Mock<'a> {
    pub table: &'a Table,
    pub table_fd: i32,
    pub sockarray_fd: i32,
    /// Whether the sockarray has a socket in this slot.
    pub present: &'a dyn Fn(u32) -> bool,
    /// What bpf_ktime_get_coarse_ns() returns.
    pub now_ns: u64,
}

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    pub verdict: u64,
    /// The slot selected, None when the kernel's hash decides.
    pub selected: Option<u32>,
    /// Instructions executed.
    pub steps: usize,
    /// sk_select_reuseport calls made.
    pub select_calls: usize,
}

pub(crate) fn run(insns: &[Insn], mock: &Mock<'_>, hash: u32) -> Run {
    let mut ctx = [0u8; CTX_SIZE];
    ctx[CTX_HASH as usize..CTX_HASH as usize + 4].copy_from_slice(&hash.to_le_bytes());
    let mut stack = [0u8; STACK_SIZE];
    let mut r = [0u64; 11];
    r[1] = CTX;
    r[10] = STACK + STACK_SIZE as u64;
    let mut out = Run { verdict: 0, selected: None, steps: 0, select_calls: 0 };
    let mut pc = 0usize;
    loop {
        out.steps += 1;
        assert!(out.steps < 10_000, "runaway program");
        let i = insns[pc];
        let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
        let imm64 = i.imm as i64 as u64;
        pc += 1;
        let class = i.code & 0x07;
        match class {
            ALU64 | ALU32 => {
                let b = if i.code & SRC_X != 0 { r[src] } else { imm64 };
                let a = r[dst];
                let v =
                    if class == ALU64 { alu(i.code & 0xf0, a, b) } else { alu32(i.code & 0xf0, a as u32, b as u32) };
                r[dst] = v;
            }
            JMP | JMP32 => match i.code & 0xf0 {
                EXIT => {
                    out.verdict = r[0];
                    return out;
                }
                CALL => {
                    r[0] = call(i.imm, &r, &stack, mock, &mut out);
                    r[1..=5].fill(0xdead_beef); // clobbered
                }
                op => {
                    let b = if i.code & SRC_X != 0 { r[src] } else { imm64 };
                    let (a, b) = if class == JMP32 { (r[dst] as u32 as u64, b as u32 as u64) } else { (r[dst], b) };
                    let taken = match op {
                        JA => true,
                        JEQ => a == b,
                        JNE => a != b,
                        JGT => a > b,
                        JGE => a >= b,
                        JLT => a < b,
                        _ => panic!("jump op {:#x} at {}", i.code, pc - 1),
                    };
                    if taken {
                        pc = (pc as i64 + i.off as i64) as usize;
                    }
                }
            },
            _ if i.code == LD_IMM64 => {
                assert_eq!(src, BPF_PSEUDO_MAP_FD as usize, "only map fds are loaded as 64-bit immediates");
                r[dst] = MAP_FD | i.imm as u32 as u64;
                pc += 1;
            }
            LDX => {
                assert_eq!(i.code, LDX | MEM | SIZE_W, "32-bit loads only");
                r[dst] = read_u32(r[src].wrapping_add(i.off as i64 as u64), &stack, &ctx, mock) as u64;
            }
            ST | STX => {
                let addr = r[dst].wrapping_add(i.off as i64 as u64);
                if i.code == STX | ATOMIC | SIZE_W {
                    assert!(i.imm == ADD as i32 || i.imm == ADD as i32 | FETCH, "atomic add only");
                    let old = table_word(addr, mock).fetch_add(r[src] as u32, Ordering::SeqCst);
                    if i.imm & FETCH != 0 {
                        r[src] = old as u64;
                    }
                    continue;
                }
                if i.code == STX | MEM | SIZE_DW {
                    assert_eq!(region(addr), TABLE_VALUE, "64-bit stores go to the table");
                    let off = (addr - TABLE_VALUE) as usize;
                    assert!(off % 8 == 0 && off + 8 <= mock.table.layout().size, "table store at {off}");
                    mock.table.dword(off).store(r[src], Ordering::SeqCst);
                    continue;
                }
                let v = if class == STX { r[src] as u32 } else { i.imm as u32 };
                assert!(i.code & 0xe0 == MEM && i.code & 0x18 == SIZE_W, "32-bit stores only");
                assert!(region(addr) == STACK, "stores go to the stack (or are atomic adds on the table)");
                let at = stack_offset(addr, 4);
                stack[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => panic!("opcode {:#x} at {}", i.code, pc - 1),
        }
    }
}

fn alu(op: u8, a: u64, b: u64) -> u64 {
    match op {
        ADD => a.wrapping_add(b),
        SUB => a.wrapping_sub(b),
        MUL => a.wrapping_mul(b),
        AND => a & b,
        LSH => a << (b & 63),
        RSH => a >> (b & 63),
        MOD => a.checked_rem(b).unwrap_or(a), // eBPF: x mod 0 = x
        MOV => b,
        _ => panic!("alu64 op {op:#x}"),
    }
}

fn alu32(op: u8, a: u32, b: u32) -> u64 {
    (match op {
        ADD => a.wrapping_add(b),
        SUB => a.wrapping_sub(b),
        MUL => a.wrapping_mul(b),
        AND => a & b,
        LSH => a << (b & 31),
        RSH => a >> (b & 31),
        MOD => a.checked_rem(b).unwrap_or(a),
        MOV => b,
        _ => panic!("alu32 op {op:#x}"),
    }) as u64
}

fn region(addr: u64) -> u64 {
    addr & !(REGION - 1)
}

fn stack_offset(addr: u64, size: usize) -> usize {
    let off = (addr - STACK) as usize;
    assert!(off + size <= STACK_SIZE, "stack access out of bounds");
    off
}

fn table_word<'a>(addr: u64, mock: &Mock<'a>) -> &'a std::sync::atomic::AtomicU32 {
    assert_eq!(region(addr), TABLE_VALUE, "not a pointer into the table");
    let off = (addr - TABLE_VALUE) as usize;
    assert!(off + 4 <= mock.table.layout().size, "table access at {off} out of bounds");
    mock.table.word(off)
}

fn read_u32(addr: u64, stack: &[u8], ctx: &[u8], mock: &Mock<'_>) -> u32 {
    match region(addr) {
        STACK => {
            let at = stack_offset(addr, 4);
            u32::from_le_bytes(stack[at..at + 4].try_into().unwrap())
        }
        CTX => {
            let at = (addr - CTX) as usize;
            assert!(at + 4 <= CTX_SIZE);
            u32::from_le_bytes(ctx[at..at + 4].try_into().unwrap())
        }
        _ => table_word(addr, mock).load(Ordering::SeqCst),
    }
}

fn call(helper: i32, r: &[u64; 11], stack: &[u8], mock: &Mock<'_>, out: &mut Run) -> u64 {
    let key = |p: u64| {
        let at = stack_offset(p, 4);
        u32::from_le_bytes(stack[at..at + 4].try_into().unwrap())
    };
    match helper {
        HELPER_MAP_LOOKUP_ELEM => {
            assert_eq!(r[1], MAP_FD | mock.table_fd as u32 as u64, "looks up the table map");
            if key(r[2]) == 0 {
                TABLE_VALUE
            } else {
                0
            }
        }
        HELPER_SK_SELECT_REUSEPORT => {
            assert_eq!(r[1], CTX, "first argument: the context");
            assert_eq!(r[2], MAP_FD | mock.sockarray_fd as u32 as u64, "selects from the sockarray");
            assert_eq!(r[4], 0, "no flags");
            out.select_calls += 1;
            let slot = key(r[3]);
            let keys = mock.table.capacity() + crate::steering::slots::FALLBACK_MAX;
            assert!((slot as usize) < keys, "key {slot} beyond the sockarray");
            if (mock.present)(slot) {
                out.selected = Some(slot);
                0
            } else {
                ENOENT
            }
        }
        HELPER_KTIME_GET_COARSE_NS => mock.now_ns,
        other => panic!("helper {other}"),
    }
}
