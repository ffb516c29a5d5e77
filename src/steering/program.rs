//! The steering program: a reuseport eBPF program that picks, for each new connection (and
//! for each connection a closing listener hands on), one of the group's *eligible* sockets
//! by the connection's hash.
//!
//! Eligible means: the slot's socket is in the sockarray and its flags word in the slot
//! table says it is neither stalled, overloaded nor retiring (slots.rs). The choice is the
//! k-th eligible slot, k = hash mod (number eligible), so the spread stays even over the
//! eligible ones. When that slot's socket is gone (its process died, its listener
//! closed), the next eligible one is tried; when neither can be selected the program
//! returns SK_PASS without a choice and the kernel hashes over the whole group: a
//! connection is never refused.
//!
//! The loops over slots are unrolled here, at assembly time, into straight-line code
//! without branches (about 40 instructions per slot, some 5,000 in all: a privileged
//! master loads it; the 4,096-instruction limit is for unprivileged loads only).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::slots::{FLAGS_ELIGIBILITY, FLAG_MEMBER, SLOTS};
use crate::sys::bpf::{self, Insn, SK_PASS};

pub(crate) const STEER_PROGRAM_NAME: &[u8] = b"reuseport_steer";

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_SK_SELECT_REUSEPORT: i32 = 82;
/// Offset of `hash` in struct sk_reuseport_md (linux/bpf.h).
const CTX_HASH: i16 = 32;
const BPF_PSEUDO_MAP_FD: u8 = 1;

// Registers: r1-r5 are helper arguments and clobbered by calls; r6-r9 survive them.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const CTX: u8 = 6; // the program's context
const TABLE: u8 = 7; // the slot table's value
const RANK: u8 = 8; // a count of eligible slots
const K: u8 = 9; // hash mod eligible
const FP: u8 = 10;

#[derive(Clone, Copy)]
struct Label(usize);

#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, usize)>,
}

impl Asm {
    fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn { code, regs: dst | (src << 4), off, imm });
    }
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }
    fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to.0));
        self.emit(code, dst, src, 0, imm);
    }
    fn mov_reg(&mut self, dst: u8, src: u8) {
        self.emit(0xbf, dst, src, 0, 0); // BPF_ALU64 | BPF_MOV | BPF_X
    }
    fn mov_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0xb7, dst, 0, 0, imm); // BPF_ALU64 | BPF_MOV | BPF_K
    }
    fn add_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0x07, dst, 0, 0, imm); // BPF_ALU64 | BPF_ADD | BPF_K
    }
    fn and_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0x57, dst, 0, 0, imm); // BPF_ALU64 | BPF_AND | BPF_K
    }
    fn mod32_reg(&mut self, dst: u8, src: u8) {
        self.emit(0x9c, dst, src, 0, 0); // BPF_ALU | BPF_MOD | BPF_X
    }
    fn load_u32(&mut self, dst: u8, base: u8, off: i16) {
        self.emit(0x61, dst, base, off, 0); // BPF_LDX | BPF_MEM | BPF_W
    }
    fn store_u32_imm(&mut self, base: u8, off: i16, imm: i32) {
        self.emit(0x62, base, 0, off, imm); // BPF_ST | BPF_MEM | BPF_W
    }
    fn load_map(&mut self, dst: u8, map: BorrowedFd<'_>) {
        self.emit(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()); // BPF_LD | BPF_DW | BPF_IMM
        self.emit(0, 0, 0, 0, 0);
    }
    fn call(&mut self, helper: i32) {
        self.emit(0x85, 0, 0, 0, helper);
    }
    fn exit(&mut self) {
        self.emit(0x95, 0, 0, 0, 0);
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[label].expect("every label is bound");
            self.insns[at].off = i16::try_from(target as i64 - at as i64 - 1).expect("jump within range");
        }
        self.insns
    }
}

const JEQ_IMM: u8 = 0x15;
const R5: u8 = 5;

impl Asm {
    /// dst = (dst == 0) as 0/1, without a branch, using `tmp`.
    fn is_zero(&mut self, dst: u8, tmp: u8) {
        self.mov_reg(tmp, dst);
        self.emit(0x87, tmp, 0, 0, 0); // tmp = -tmp
        self.emit(0x4f, dst, tmp, 0, 0); // dst |= tmp: top bit set iff dst was not 0
        self.emit(0x77, dst, 0, 0, 63); // dst >>= 63
        self.emit(0xa7, dst, 0, 0, 1); // dst ^= 1
    }
    /// r5 = whether slot `i` is eligible (0/1), without a branch.
    fn eligible_bit(&mut self, i: usize) {
        self.load_u32(R5, TABLE, (i * 4) as i16);
        self.and_imm(R5, FLAGS_ELIGIBILITY as i32);
        self.emit(0xa7, R5, 0, 0, FLAG_MEMBER as i32); // 0 iff eligible
        self.is_zero(R5, R1);
    }
    /// acc |= i when the eligible slot `i` (r5 = 1) has rank `want` (rank = RANK).
    fn pick_if_rank(&mut self, i: usize, want: u8, acc: u8) {
        self.mov_reg(R1, RANK);
        self.emit(0xaf, R1, want, 0, 0); // r1 ^= want: 0 iff rank == want
        self.is_zero(R1, R2);
        self.emit(0x5f, R1, R5, 0, 0); // r1 &= eligible: 1 iff picked
                                       // r1 *= i (not a mask of -r1: the verifier splits its state on AND with a value
                                       // in [-1, 0], once per slot, and the paths double 128 times).
        self.emit(0x27, R1, 0, 0, i as i32);
        self.emit(0x4f, acc, R1, 0, 0); // acc |= r1
    }
    fn select_key_at(&mut self, off: i16, sockarray: BorrowedFd<'_>) {
        self.mov_reg(R1, CTX);
        self.load_map(R2, sockarray);
        self.mov_reg(R3, FP);
        self.add_imm(R3, off.into());
        self.mov_imm(R4, 0);
        self.call(HELPER_SK_SELECT_REUSEPORT);
    }
}

/// The program. Every pass over the slots is branchless, so the verifier walks one path
/// (a counter it could follow exactly would multiply paths beyond its limit).
pub(crate) fn assemble(table: BorrowedFd<'_>, sockarray: BorrowedFd<'_>) -> Vec<Insn> {
    const K2: u8 = R0; // the second choice's rank
    const FIRST: u8 = R4; // the k-th eligible slot
    const SECOND: u8 = R3; // the one after it
    let mut a = Asm::default();
    let pass = a.label();

    a.mov_reg(CTX, R1);
    a.store_u32_imm(FP, -4, 0);
    a.load_map(R1, table);
    a.mov_reg(R2, FP);
    a.add_imm(R2, -4);
    a.call(HELPER_MAP_LOOKUP_ELEM);
    a.jump(JEQ_IMM, R0, 0, 0, pass);
    a.mov_reg(TABLE, R0);

    // How many slots are eligible.
    a.mov_imm(RANK, 0);
    for i in 0..SLOTS {
        a.eligible_bit(i);
        a.emit(0x0f, RANK, R5, 0, 0); // rank += eligible
    }
    a.jump(JEQ_IMM, RANK, 0, 0, pass);
    a.load_u32(K, CTX, CTX_HASH);
    a.mod32_reg(K, RANK);
    a.mov_reg(K2, K);
    a.add_imm(K2, 1);
    a.mod32_reg(K2, RANK);

    // The k-th eligible slot, and the next one in case the first is gone.
    a.mov_imm(RANK, 0);
    a.mov_imm(FIRST, 0);
    a.mov_imm(SECOND, 0);
    for i in 0..SLOTS {
        a.eligible_bit(i);
        a.pick_if_rank(i, K, FIRST);
        a.pick_if_rank(i, K2, SECOND);
        a.emit(0x0f, RANK, R5, 0, 0);
    }
    a.emit(0x63, FP, FIRST, -8, 0); // *(u32 *)(fp - 8) = first
    a.emit(0x63, FP, SECOND, -12, 0); // *(u32 *)(fp - 12) = second
    a.select_key_at(-8, sockarray);
    a.jump(JEQ_IMM, R0, 0, 0, pass);
    // The first choice's socket is gone (its process died or closed it, and the watch
    // has not freed the slot yet): the second; if that fails too, the kernel's hash.
    a.select_key_at(-12, sockarray);

    a.bind(pass);
    a.mov_imm(R0, SK_PASS);
    a.exit();
    a.finish()
}

/// Loads the steering program over these two maps; the program holds references to them.
pub(crate) fn load(table: BorrowedFd<'_>, sockarray: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    bpf::load_program(&assemble(table, sockarray), STEER_PROGRAM_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn every_jump_lands_inside_the_program() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let insns = assemble(f.as_fd(), f.as_fd());
        let n = insns.len() as i64;
        for (pc, insn) in insns.iter().enumerate() {
            let class = insn.code & 0x07;
            if class == 0x05 && insn.code != 0x85 && insn.code != 0x95 {
                let target = pc as i64 + 1 + insn.off as i64;
                assert!((0..n).contains(&target), "jump at {pc} lands at {target} of {n}");
            }
        }
        assert_eq!(insns.last().unwrap().code, 0x95, "the program ends with exit");
    }
}
