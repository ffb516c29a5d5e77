//! A tiny eBPF assembler: the instructions the steering program uses, with labels. The
//! opcodes are named here once, so the program (program.rs) and the userspace
//! interpreter its tests run it in (interp.rs) agree on them.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sys::bpf::Insn;

// Classes, sizes, sources.
pub(crate) const LDX: u8 = 0x01;
pub(crate) const ST: u8 = 0x02;
pub(crate) const STX: u8 = 0x03;
pub(crate) const ALU32: u8 = 0x04;
pub(crate) const JMP: u8 = 0x05;
pub(crate) const JMP32: u8 = 0x06;
pub(crate) const ALU64: u8 = 0x07;
pub(crate) const LD_IMM64: u8 = 0x18;
pub(crate) const SIZE_W: u8 = 0x00;
pub(crate) const SIZE_DW: u8 = 0x18;
/// With an atomic op: the old value into the source register.
pub(crate) const FETCH: i32 = 0x01;
pub(crate) const MEM: u8 = 0x60;
pub(crate) const ATOMIC: u8 = 0xc0;
pub(crate) const SRC_X: u8 = 0x08;

// ALU operations.
pub(crate) const ADD: u8 = 0x00;
pub(crate) const SUB: u8 = 0x10;
pub(crate) const MUL: u8 = 0x20;
pub(crate) const AND: u8 = 0x50;
pub(crate) const LSH: u8 = 0x60;
pub(crate) const RSH: u8 = 0x70;
pub(crate) const MOD: u8 = 0x90;
pub(crate) const MOV: u8 = 0xb0;

// Jumps.
pub(crate) const JA: u8 = 0x00;
pub(crate) const JEQ: u8 = 0x10;
pub(crate) const JGT: u8 = 0x20;
pub(crate) const JGE: u8 = 0x30;
pub(crate) const JNE: u8 = 0x50;
pub(crate) const JLT: u8 = 0xa0;
pub(crate) const CALL: u8 = 0x80;
pub(crate) const EXIT: u8 = 0x90;

pub(crate) const BPF_PSEUDO_MAP_FD: u8 = 1;

/// A register.
pub(crate) type Reg = u8;
pub(crate) const R0: Reg = 0;
pub(crate) const R1: Reg = 1;
pub(crate) const R2: Reg = 2;
pub(crate) const R3: Reg = 3;
pub(crate) const R4: Reg = 4;
pub(crate) const R5: Reg = 5;
pub(crate) const R6: Reg = 6;
pub(crate) const R7: Reg = 7;
pub(crate) const R8: Reg = 8;
pub(crate) const R9: Reg = 9;
pub(crate) const FP: Reg = 10;

#[derive(Clone, Copy)]
pub(crate) struct Label(usize);

#[derive(Default)]
pub(crate) struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, usize)>,
}

impl Asm {
    fn emit(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) {
        self.insns.push(Insn { code, regs: dst | (src << 4), off, imm });
    }
    pub(crate) fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }
    pub(crate) fn bind(&mut self, l: Label) {
        assert!(self.labels[l.0].replace(self.insns.len()).is_none(), "a label is bound once");
    }
    /// dst (64 bits) op= imm.
    pub(crate) fn alu64_imm(&mut self, op: u8, dst: Reg, imm: i32) {
        self.emit(ALU64 | op, dst, 0, 0, imm);
    }
    /// dst (64 bits) op= src.
    pub(crate) fn alu64(&mut self, op: u8, dst: Reg, src: Reg) {
        self.emit(ALU64 | op | SRC_X, dst, src, 0, 0);
    }
    /// dst (32 bits, upper half cleared) op= src.
    pub(crate) fn alu32(&mut self, op: u8, dst: Reg, src: Reg) {
        self.emit(ALU32 | op | SRC_X, dst, src, 0, 0);
    }
    /// if (dst op imm) goto to, 64-bit compare.
    pub(crate) fn jump_imm(&mut self, op: u8, dst: Reg, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to.0));
        self.emit(JMP | op, dst, 0, 0, imm);
    }
    /// if (dst op src) goto to, 64-bit compare.
    pub(crate) fn jump(&mut self, op: u8, dst: Reg, src: Reg, to: Label) {
        self.fixups.push((self.insns.len(), to.0));
        self.emit(JMP | op | SRC_X, dst, src, 0, 0);
    }
    /// if (dst op src) goto to, 32-bit compare.
    pub(crate) fn jump32(&mut self, op: u8, dst: Reg, src: Reg, to: Label) {
        self.fixups.push((self.insns.len(), to.0));
        self.emit(JMP32 | op | SRC_X, dst, src, 0, 0);
    }
    pub(crate) fn goto(&mut self, to: Label) {
        self.fixups.push((self.insns.len(), to.0));
        self.emit(JMP | JA, 0, 0, 0, 0);
    }
    /// dst = *(u32 *)(base + off)
    pub(crate) fn load_u32(&mut self, dst: Reg, base: Reg, off: i16) {
        self.emit(LDX | MEM | SIZE_W, dst, base, off, 0);
    }
    /// *(u32 *)(base + off) = src
    pub(crate) fn store_u32(&mut self, base: Reg, off: i16, src: Reg) {
        self.emit(STX | MEM | SIZE_W, base, src, off, 0);
    }
    /// *(u32 *)(base + off) = imm
    pub(crate) fn store_u32_imm(&mut self, base: Reg, off: i16, imm: i32) {
        self.emit(ST | MEM | SIZE_W, base, 0, off, imm);
    }
    /// *(u32 *)(base + off) += src, atomically (lock xadd).
    pub(crate) fn atomic_add_u32(&mut self, base: Reg, off: i16, src: Reg) {
        self.emit(STX | ATOMIC | SIZE_W, base, src, off, ADD as i32);
    }
    /// src = *(u32 *)(base + off), then *(u32 *)(base + off) += src, atomically (lock xadd).
    pub(crate) fn atomic_fetch_add_u32(&mut self, base: Reg, off: i16, src: Reg) {
        self.emit(STX | ATOMIC | SIZE_W, base, src, off, ADD as i32 | FETCH);
    }
    /// *(u64 *)(base + off) = src
    pub(crate) fn store_u64(&mut self, base: Reg, off: i16, src: Reg) {
        self.emit(STX | MEM | SIZE_DW, base, src, off, 0);
    }
    /// dst = the map behind fd (the kernel replaces the fd with the map's address).
    pub(crate) fn load_map(&mut self, dst: Reg, map: BorrowedFd<'_>) {
        self.emit(LD_IMM64, dst, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd());
        self.emit(0, 0, 0, 0, 0);
    }
    pub(crate) fn call(&mut self, helper: i32) {
        self.emit(JMP | CALL, 0, 0, 0, helper);
    }
    pub(crate) fn exit(&mut self) {
        self.emit(JMP | EXIT, 0, 0, 0, 0);
    }
    pub(crate) fn finish(mut self) -> Vec<Insn> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[label].expect("every label is bound");
            self.insns[at].off = i16::try_from(target as i64 - at as i64 - 1).expect("jump within range");
        }
        self.insns
    }
}
