//! The steering program: a reuseport eBPF program that picks, for each new connection (and
//! for each connection a closing listener hands on), one of the group's *eligible*
//! sockets, preferring the less loaded of two.
//!
//! Per connection it reads the eligible list's head (which half, how many: n), takes two
//! entries by the connection's hash, k1 = hash mod n and the one after it (power of two
//! choices among neighbours, which share a cache line), and checks each one's flags (the list may be a
//! moment old, see eligible.rs). Of two eligible candidates it tries the one with the
//! lower load first: the figure its owner publishes (open connections, or 0) plus the
//! connections sent to it since its owner's last heartbeat, which grows at once for a
//! worker that stopped accepting or is busy in one long request. Under even load the two
//! are equal most of the time and the hash decides, so the spread stays even. When
//! nothing is listed, it selects a fallback socket of another binary the master named
//! (an upgrade's inherited stock sockets, Steering::add_fallback), if any. When the
//! chosen socket is gone (its process died, its listener closed), or nothing is listed
//! and there is no fallback, or some worker could not get a slot (it then gets its share
//! from the kernel's hash like every other), it returns SK_PASS without a choice and the
//! kernel hashes over the whole group: a connection is never refused. A selection bumps
//! the slot's arrival counter, which also tells the master's watch, without a system call,
//! that connections arrive; the first one since the owner's last heartbeat also stamps
//! its arrival time (bpf_ktime_get_coarse_ns()), from which the watch times a stall
//! (watch.rs).
//!
//! About 120 instructions, of which a connection runs at most 86, whatever the number of
//! workers: no loop, and the verifier walks a handful of paths.

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

// Registers that live across helper calls (r1-r5 do not).
const CTX: Reg = R6;
const TABLE: Reg = R7;
/// The eligible count, then candidate A's hot record.
const A: Reg = R8;
/// The current half of the list, then candidate B's hot record.
const B: Reg = R9;
/// Stack slots: the table's key, and the two candidates' slot numbers (sockarray keys).
const KEY_TABLE: i16 = -4;
const KEY_A: i16 = -8;
const KEY_B: i16 = -12;

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

    // k1 = hash mod n; k2 = the entry after it (the first after the last): neighbours in
    // the list, so both candidates' entries and, as the list is in slot order, mostly
    // both hot records share a cache line. Random pairs cost a cache miss each at every
    // connection (measured: about 500 ns per connection with 1,024 workers, where the
    // caches are cold from the context switches).
    let (k1, k2, have_k2) = (R3, R4, a.label());
    a.load_u32(R2, CTX, CTX_HASH);
    a.alu32(MOV, k1, R2);
    a.alu32(MOD, k1, A);
    a.jump_imm(JGE, k1, cap, pass);
    a.alu64(MOV, k2, k1);
    a.alu64_imm(ADD, k2, 1);
    a.jump(JLT, k2, A, have_k2);
    a.alu64_imm(MOV, k2, 0);
    a.bind(have_k2);
    a.jump_imm(JGE, k2, cap, pass);

    // The two entries: slot numbers, bounded for the verifier (and against a torn list).
    for k in [k1, k2] {
        a.alu64_imm(LSH, k, 2);
        a.alu64(MOV, R5, B);
        a.alu64(ADD, R5, k);
        a.load_u32(k, R5, 0);
        a.jump_imm(JGE, k, cap, pass);
    }
    a.store_u32(FP, KEY_A, k1);
    a.store_u32(FP, KEY_B, k2);
    for (k, rec) in [(k1, A), (k2, B)] {
        a.alu64_imm(LSH, k, 4);
        a.alu64(MOV, rec, TABLE);
        a.alu64(ADD, rec, k);
    }

    let (bump_a, a_out) = (a.label(), a.label());
    let not_eligible = |a: &mut Asm, rec: Reg, to: Label| {
        a.load_u32(R1, rec, hot(HOT_FLAGS));
        a.alu64_imm(AND, R1, FLAGS_ELIGIBILITY as i32);
        a.jump_imm(JNE, R1, FLAG_MEMBER as i32, to);
    };
    let select = |a: &mut Asm, key: i16, on_success: Label| {
        a.alu64(MOV, R1, CTX);
        a.load_map(R2, sockarray);
        a.alu64(MOV, R3, FP);
        a.alu64_imm(ADD, R3, key.into());
        a.alu64_imm(MOV, R4, 0);
        a.call(HELPER_SK_SELECT_REUSEPORT);
        a.jump_imm(JEQ, R0, 0, on_success);
    };
    // score = load + arrivals - seen, in 32 bits.
    let score = |a: &mut Asm, dst: Reg, rec: Reg| {
        a.load_u32(dst, rec, hot(HOT_LOAD));
        a.load_u32(R5, rec, hot(HOT_ARRIVALS));
        a.alu32(ADD, dst, R5);
        a.load_u32(R5, rec, hot(HOT_SEEN));
        a.alu32(SUB, dst, R5);
    };

    // Of two eligible candidates the lower score; each has its own call site and key.
    // One attempt: a selection that fails (the socket closed since the list was built:
    // a killed worker, until its slot is freed) leaves the connection to the kernel's
    // hash.
    let (sel_a, sel_b, bump_b) = (a.label(), a.label(), a.label());
    not_eligible(&mut a, A, a_out);
    not_eligible(&mut a, B, sel_a);
    score(&mut a, R1, A);
    score(&mut a, R2, B);
    a.jump32(JGE, R2, R1, sel_a);
    a.bind(sel_b);
    select(&mut a, KEY_B, bump_b);
    a.goto(pass);
    a.bind(sel_a);
    select(&mut a, KEY_A, bump_a);
    a.goto(pass);
    a.bind(a_out);
    not_eligible(&mut a, B, pass);
    a.goto(sel_b);

    // A selection counts the connection on its slot. The first one since the owner's last
    // heartbeat (arrivals were equal to seen) also stamps its arrival time: the watch
    // times a stall from it, so it need not sample every slot every few milliseconds.
    // The only helper call besides the selection, and only on that first connection.
    for (label, rec, key) in [(bump_a, A, KEY_A), (bump_b, B, KEY_B)] {
        a.bind(label);
        a.alu64_imm(MOV, R1, 1);
        a.atomic_fetch_add_u32(rec, hot(HOT_ARRIVALS), R1);
        a.load_u32(R2, rec, hot(HOT_SEEN));
        a.jump32(JNE, R1, R2, out);
        a.load_u32(R1, FP, key);
        a.jump_imm(JGE, R1, cap, out);
        a.alu64_imm(LSH, R1, 3);
        a.alu64(MOV, rec, TABLE);
        a.alu64(ADD, rec, R1);
        a.alu64_imm(ADD, rec, layout.unseen_at as i32);
        a.call(HELPER_KTIME_GET_COARSE_NS);
        a.store_u64(rec, 0, R0);
        a.goto(out);
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
    select(&mut a, KEY_A, pass);

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
