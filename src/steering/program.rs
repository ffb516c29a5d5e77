//! The steering program: a reuseport eBPF program that picks, for each new connection (and
//! for each connection a closing listener hands on), one of the group's *eligible*
//! sockets, the least loaded of a few.
//!
//! Per connection it reads the eligible list's head (which half, how many: n) and compares
//! CANDIDATES entries of the list from k = hash mod n on, wrapping (power of d choices
//! among neighbours, whose entries and hot records share cache lines), checking each one's
//! flags (the list may be a moment old, see eligible.rs). Of the eligible ones it selects
//! the lowest load: the figure the owner publishes (open connections, or 0) plus the
//! connections sent to it since the owner's last heartbeat, which grows at once for a
//! worker that stopped accepting or is blocked in one long request. Under even load they
//! are equal most of the time and the first, the hash's, wins, so the spread stays even.
//! Four rather than two: with 1 request in 50 blocking its worker for 20 ms, 4 workers
//! spend much of the time with two or three of them blocked, and two neighbours were
//! often both blocked (p99 39 ms against 22 with four; docs/benchmarks.md). When nothing
//! is listed, it selects a fallback socket of another binary the master named (an
//! upgrade's inherited stock sockets, Steering::add_fallback), if any. When the chosen
//! socket is gone (its process died, its listener closed: the connection still counts on
//! its slot, so that the next ones go elsewhere and the watch finds it), or nothing is
//! listed and there is no fallback, or some worker could not get a slot (it then gets its
//! share from the kernel's hash like every other), it returns SK_PASS without a choice
//! and the kernel hashes over the whole group: a connection is never refused. A selection
//! bumps the slot's arrival counter, which also tells the master's watch, without a
//! system call, that connections arrive; the first one since the owner's last heartbeat
//! also stamps its arrival time (bpf_ktime_get_coarse_ns()), from which the watch times a
//! stall (watch.rs).
//!
//! About 175 instructions, of which a connection runs at most about 136, whatever the
//! number of workers (program_tests.rs): the candidates are unrolled, no loop. Nearly all
//! of a connection's cost is the one bpf_sk_select_reuseport() call, not the comparisons
//! (docs/benchmarks.md, "Where the cost goes").

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::asm::*;
use super::slots::{
    Layout, FALLBACK, FALLBACK_MAX, FLAGS_ELIGIBILITY, FLAG_MEMBER, HEAD, HEAD_HALF, HOT, HOT_ARRIVALS, HOT_FLAGS,
    HOT_LOAD, HOT_SEEN, PASSED, UNLISTED,
};
use crate::sys::bpf::{self, Insn, SK_PASS};

pub(crate) const STEER_PROGRAM_NAME: &[u8] = b"reuseport_steer";

pub(crate) const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
pub(crate) const HELPER_SK_SELECT_REUSEPORT: i32 = 82;
/// CLOCK_MONOTONIC_COARSE: about half the cost of bpf_ktime_get_ns() here (measured: 55
/// against 110 to 130 ns more per stamped connection), to within a jiffy (1 to 4 ms).
pub(crate) const HELPER_KTIME_GET_COARSE_NS: i32 = 160;
/// Offset of `hash` in struct sk_reuseport_md (linux/bpf.h).
pub(crate) const CTX_HASH: i16 = 32;
/// How many neighbouring entries of the eligible list a connection compares.
pub(crate) const CANDIDATES: usize = 4;

// Registers that live across helper calls (r1-r5 do not).
const CTX: Reg = R6;
const TABLE: Reg = R7;
/// The eligible count, then the chosen slot's hot record.
const A: Reg = R8;
/// The current half of the list.
const B: Reg = R9;
/// Stack slots: the table's key, and the chosen slot's number (its sockarray key).
const KEY_TABLE: i16 = -4;
const KEY_A: i16 = -8;

const fn hot(field: usize) -> i16 {
    (HOT + field) as i16
}

/// The program for a table of this layout. `cap` is part of the code (the bounds the
/// verifier needs), so a program and its table are made together.
pub(crate) fn assemble(layout: &Layout, table: BorrowedFd<'_>, sockarray: BorrowedFd<'_>) -> Vec<Insn> {
    let cap = layout.cap as i32;
    let mut a = Asm::default();
    let (out, pass, fallback) = (a.label(), a.label(), a.label());

    a.alu64(MOV, CTX, R1);
    a.store_u32_imm(FP, KEY_TABLE, 0);
    a.load_map(R1, table);
    a.alu64(MOV, R2, FP);
    a.alu64_imm(ADD, R2, KEY_TABLE.into());
    a.call(HELPER_MAP_LOOKUP_ELEM);
    a.jump_imm(JEQ, R0, 0, out);
    a.alu64(MOV, TABLE, R0);

    // A worker without a slot: every connection to the kernel's hash, so it gets its share.
    a.load_u32(R1, TABLE, UNLISTED as i16);
    a.jump_imm(JNE, R1, 0, pass);

    // n = the count, B = the current half of the list.
    a.load_u32(R1, TABLE, HEAD as i16);
    a.alu64(MOV, A, R1);
    a.alu64_imm(AND, A, !HEAD_HALF as i32);
    a.jump_imm(JEQ, A, 0, fallback);
    a.jump_imm(JGT, A, cap, pass);
    a.alu64_imm(RSH, R1, 31);
    a.alu64_imm(MUL, R1, 4 * cap);
    a.alu64(MOV, B, TABLE);
    a.alu64(ADD, B, R1);
    a.alu64_imm(ADD, B, layout.list as i32);

    // The candidates: CANDIDATES entries of the list from k = hash mod n on, wrapping
    // (neighbours, so their entries and, as the list is in slot order, mostly their hot
    // records share cache lines; random ones cost a cache miss each at every connection,
    // measured: about 500 ns per connection with 1,024 workers). Of the eligible ones the
    // lowest score; the first of equal ones, so the hash decides among equals.
    let (k, best) = (R3, R4);
    a.load_u32(R2, CTX, CTX_HASH);
    a.alu32(MOV, k, R2);
    a.alu32(MOD, k, A);
    a.alu64_imm(MOV, best, -1);
    for c in 0..CANDIDATES {
        let skip = a.label();
        a.jump_imm(JGE, k, cap, pass);
        // slot = list[k], bounded for the verifier (and against a torn list)
        a.alu64(MOV, R1, k);
        a.alu64_imm(LSH, R1, 2);
        a.alu64(ADD, R1, B);
        a.load_u32(R0, R1, 0);
        a.jump_imm(JGE, R0, cap, pass);
        a.alu64(MOV, R1, R0);
        a.alu64_imm(LSH, R1, 4);
        a.alu64(ADD, R1, TABLE);
        a.load_u32(R2, R1, hot(HOT_FLAGS));
        a.alu64_imm(AND, R2, FLAGS_ELIGIBILITY as i32);
        a.jump_imm(JNE, R2, FLAG_MEMBER as i32, skip);
        // score = load + arrivals - seen, in 32 bits
        a.load_u32(R2, R1, hot(HOT_LOAD));
        a.load_u32(R5, R1, hot(HOT_ARRIVALS));
        a.alu32(ADD, R2, R5);
        a.load_u32(R5, R1, hot(HOT_SEEN));
        a.alu32(SUB, R2, R5);
        a.jump32(JGE, R2, best, skip);
        a.alu64(MOV, best, R2);
        a.store_u32(FP, KEY_A, R0);
        a.bind(skip);
        if c + 1 < CANDIDATES {
            let wrapped = a.label();
            a.alu64_imm(ADD, k, 1);
            a.jump(JLT, k, A, wrapped);
            a.alu64_imm(MOV, k, 0);
            a.bind(wrapped);
        }
    }
    // None eligible among them (the list may be a moment old): the kernel's hash.
    a.jump_imm(JEQ, best, -1, pass);
    a.load_u32(R1, FP, KEY_A);
    a.jump_imm(JGE, R1, cap, pass);
    a.alu64_imm(LSH, R1, 4);
    a.alu64(MOV, A, TABLE);
    a.alu64(ADD, A, R1);
    let (bump_a, bump_failed) = (a.label(), a.label());
    // Selects the socket of slot KEY_A (a sockarray key).
    let select = |a: &mut Asm, on_success: Label| {
        a.alu64(MOV, R1, CTX);
        a.load_map(R2, sockarray);
        a.alu64(MOV, R3, FP);
        a.alu64_imm(ADD, R3, KEY_A.into());
        a.alu64_imm(MOV, R4, 0);
        a.call(HELPER_SK_SELECT_REUSEPORT);
        a.jump_imm(JEQ, R0, 0, on_success);
    };
    // One attempt: a selection that fails (the socket closed since the list was built:
    // a killed worker, until its slot is freed) leaves the connection to the kernel's
    // hash, and counts on the slot all the same: its load rises, so the next connections
    // choose another candidate instead of the kernel's hash, and the watch, seeing
    // connections its owner never takes, finds it.
    select(&mut a, bump_a);
    a.goto(bump_failed);

    // A selection counts the connection on its slot. The first one since the owner's last
    // heartbeat (arrivals were equal to seen) also stamps its arrival time: the watch
    // times a stall from it, so it need not sample every slot every few milliseconds.
    // The only helper call besides the selection, and only on that first connection.
    for (label, then) in [(bump_a, out), (bump_failed, pass)] {
        a.bind(label);
        a.alu64_imm(MOV, R1, 1);
        a.atomic_fetch_add_u32(A, hot(HOT_ARRIVALS), R1);
        a.load_u32(R2, A, hot(HOT_SEEN));
        a.jump32(JNE, R1, R2, then);
        a.load_u32(R1, FP, KEY_A);
        a.jump_imm(JGE, R1, cap, then);
        a.alu64_imm(LSH, R1, 3);
        a.alu64(MOV, A, TABLE);
        a.alu64(ADD, A, R1);
        a.alu64_imm(ADD, A, layout.unseen_at as i32);
        a.call(HELPER_KTIME_GET_COARSE_NS);
        a.store_u64(A, 0, R0);
        a.goto(then);
    }
    // Nothing listed (no slot eligible or warming: this binary's last workers are
    // leaving): a socket of another binary in the group, if the master gave any
    // (Steering::add_fallback), by hash. Without one, the kernel's hash would also choose
    // the leaving sockets, up to their close, which resets a handshake completing in it.
    a.bind(fallback);
    a.load_u32(R1, TABLE, FALLBACK as i16);
    a.jump_imm(JEQ, R1, 0, pass);
    a.jump_imm(JGT, R1, FALLBACK_MAX as i32, pass);
    a.load_u32(R2, CTX, CTX_HASH);
    a.alu32(MOD, R2, R1);
    a.alu64_imm(ADD, R2, cap);
    a.store_u32(FP, KEY_A, R2);
    select(&mut a, pass);

    a.bind(pass);
    a.alu64_imm(MOV, R1, 1);
    a.atomic_add_u32(TABLE, PASSED as i16, R1);
    a.goto(out);

    a.bind(out);
    a.alu64_imm(MOV, R0, SK_PASS);
    a.exit();
    a.finish()
}

/// Loads the steering program over these two maps; the program holds references to them.
pub(crate) fn load(layout: &Layout, table: BorrowedFd<'_>, sockarray: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    bpf::load_program(&assemble(layout, table, sockarray), STEER_PROGRAM_NAME)
}
