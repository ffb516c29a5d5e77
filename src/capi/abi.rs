//! How data crosses the boundary so that the ABI can grow: structs whose size the caller
//! states, and text written snprintf()-style into the caller's buffer.
//!
//! The rules (docs/api.md, "ABI rules"):
//! - An input struct starts with `size_t sz`, written by its `_init(ptr, sizeof *ptr)`.
//!   The library reads `min(sz, its own size)` bytes; fields the caller's (older) struct
//!   lacks keep their defaults; bytes of a (newer) caller's struct beyond the library's
//!   own must be zero, else the call fails with -EINVAL: the caller set an option this
//!   library does not know.
//! - An output struct is written through a pointer and the caller's `sizeof`: the library
//!   writes `min(size, its own size)` bytes and zeroes the rest, so a caller built against
//!   a newer header reads 0 in fields this library does not know.
//! - Either way `sz`/`size` must be at least the struct's size in the first release that
//!   had it (its `V1` size): anything smaller is a bug in the caller.

use std::ffi::{c_char, c_int};
use std::mem::size_of;

use crate::error::Error;

/// Reads an input struct whose first field is its size (`size_t sz`), onto `defaults`.
///
/// # Safety
/// `p` is NULL or points at a struct of at least `sz` readable bytes, whose first field,
/// a `usize`, holds `sz`.
pub(crate) unsafe fn read_sized<T: Copy>(p: *const T, v1_size: usize, defaults: T, what: &str) -> crate::Result<T> {
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: p points at the struct (the caller's contract), which begins with a usize;
    // read_unaligned copes with any alignment.
    let sz = unsafe { std::ptr::read_unaligned(p as *const usize) };
    if sz < v1_size {
        return Err(Error::invalid(format!(
            "{what}: sz is {sz}, below the struct's smallest size {v1_size}: fill it with its _init(&opts, sizeof opts)"
        )));
    }
    let ours = size_of::<T>();
    if sz > ours {
        // SAFETY: the caller's struct has sz readable bytes.
        let tail = unsafe { std::slice::from_raw_parts((p as *const u8).add(ours), sz - ours) };
        if let Some(at) = tail.iter().position(|b| *b != 0) {
            return Err(Error::invalid(format!(
                "{what}: byte {} is set, beyond this library's struct ({ours} bytes): an option of a newer \
                 reuseport ({}); leave it 0 or link a newer library",
                ours + at,
                env!("CARGO_PKG_VERSION")
            )));
        }
    }
    let mut value = defaults;
    // SAFETY: both sides hold at least min(sz, ours) bytes; T is Copy plain data made of
    // integers, for which any byte pattern is valid.
    unsafe { std::ptr::copy_nonoverlapping(p as *const u8, &mut value as *mut T as *mut u8, sz.min(ours)) };
    Ok(value)
}

/// Writes an input struct's defaults for a caller whose struct has `sz` bytes: zeroes
/// them all, then copies what fits of `defaults` (whose first field must be its size,
/// overwritten here with `sz`).
///
/// # Safety
/// `p` is NULL or points at `sz` writable bytes.
pub(crate) unsafe fn init_sized<T: Copy>(
    p: *mut T,
    sz: usize,
    v1_size: usize,
    defaults: T,
    what: &str,
) -> crate::Result<()> {
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    if sz < v1_size {
        return Err(Error::invalid(format!("{what}: size {sz} is below the struct's smallest size {v1_size}")));
    }
    let ours = size_of::<T>();
    // SAFETY: p points at sz writable bytes (the caller's contract); the copy covers at most
    // min(sz, ours) bytes of both; the first field is a usize (the struct's layout rule).
    unsafe {
        std::ptr::write_bytes(p as *mut u8, 0, sz);
        std::ptr::copy_nonoverlapping(&defaults as *const T as *const u8, p as *mut u8, sz.min(ours));
        std::ptr::write_unaligned(p as *mut usize, sz);
    }
    Ok(())
}

/// Writes an output struct into the caller's `size` bytes: what fits, then zeroes.
///
/// # Safety
/// `dst` points at `size` writable bytes, `size` >= the struct's V1 size (checked by the
/// caller with [`check_out_size`]).
pub(crate) unsafe fn write_out<T: Copy>(dst: *mut u8, size: usize, value: &T) {
    let n = size.min(size_of::<T>());
    // SAFETY: dst has size >= n writable bytes; value is n readable bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(value as *const T as *const u8, dst, n);
        std::ptr::write_bytes(dst.add(n), 0, size - n);
    }
}

/// Refuses an output size smaller than the struct's first published size.
pub(crate) fn check_out_size(size: usize, v1_size: usize, what: &str) -> crate::Result<()> {
    if size < v1_size {
        return Err(Error::invalid(format!(
            "{what}: size {size} is below the struct's smallest size {v1_size}: pass sizeof"
        )));
    }
    Ok(())
}

/// Writes `text` into `buf` of `len` bytes like snprintf(): always NUL-terminated when
/// `len` > 0, cut to fit; returns the full length (excluding the NUL).
///
/// # Safety
/// `buf` is NULL (then `len` must be 0) or points at `len` writable bytes.
pub(crate) unsafe fn write_text(buf: *mut c_char, len: usize, text: &str) -> crate::Result<c_int> {
    if buf.is_null() && len > 0 {
        return Err(Error::invalid("the buffer is NULL but its length is not 0"));
    }
    if len > 0 {
        let n = text.len().min(len - 1);
        // SAFETY: buf holds len bytes (the caller's contract); n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr() as *const c_char, buf, n);
            *buf.add(n) = 0;
        }
    }
    Ok(c_int::try_from(text.len()).unwrap_or(c_int::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Opts {
        sz: usize,
        a: c_int,
        b: c_int,
    }
    const DEFAULTS: Opts = Opts { sz: size_of::<Opts>(), a: 7, b: -1 };
    // A "version 1" of Opts had only `a`.
    const V1: usize = 12;

    #[test]
    fn an_older_callers_struct_keeps_the_defaults_of_what_it_lacks() {
        let mut buf = [0u8; 16];
        // SAFETY: buf has 16 writable bytes; an older caller's struct has 12.
        unsafe { init_sized(buf.as_mut_ptr() as *mut Opts, V1, V1, DEFAULTS, "opts") }.unwrap();
        assert_eq!(&buf[12..], &[0, 0, 0, 0], "nothing written beyond the caller's size");
        buf[8..12].copy_from_slice(&3i32.to_ne_bytes());
        // SAFETY: as above.
        let got = unsafe { read_sized(buf.as_ptr() as *const Opts, V1, DEFAULTS, "opts") }.unwrap();
        assert_eq!((got.a, got.b), (3, -1));
    }

    #[test]
    fn a_newer_callers_unknown_field_must_be_zero() {
        let mut buf = [0u8; 24];
        // SAFETY: 24 writable bytes, a newer caller's struct.
        unsafe { init_sized(buf.as_mut_ptr() as *mut Opts, 24, V1, DEFAULTS, "opts") }.unwrap();
        // SAFETY: as above.
        let got = unsafe { read_sized(buf.as_ptr() as *const Opts, V1, DEFAULTS, "opts") }.unwrap();
        assert_eq!((got.a, got.b), (7, -1));
        buf[20] = 1;
        // SAFETY: as above.
        let e = unsafe { read_sized(buf.as_ptr() as *const Opts, V1, DEFAULTS, "opts") }.unwrap_err();
        assert!(e.message.contains("byte 20 is set"), "{}", e.message);
    }

    #[test]
    fn a_size_below_the_first_release_is_refused() {
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&4usize.to_ne_bytes());
        // SAFETY: 16 readable bytes.
        assert!(unsafe { read_sized(buf.as_ptr() as *const Opts, V1, DEFAULTS, "opts") }.is_err());
        assert!(check_out_size(4, V1, "out").is_err());
    }

    #[test]
    fn output_is_cut_or_zero_padded_to_the_callers_size() {
        let v = Opts { sz: 0, a: 1, b: 2 };
        let mut big = [0xffu8; 24];
        // SAFETY: 24 writable bytes.
        unsafe { write_out(big.as_mut_ptr(), 24, &v) };
        assert_eq!(&big[16..], &[0; 8]);
        let mut small = [0xffu8; 13];
        // SAFETY: 13 writable bytes.
        unsafe { write_out(small.as_mut_ptr(), 12, &v) };
        assert_eq!(small[12], 0xff, "nothing beyond the caller's size");
    }

    #[test]
    fn text_is_cut_like_snprintf() {
        let mut buf = [0 as c_char; 4];
        // SAFETY: 4 writable bytes.
        assert_eq!(unsafe { write_text(buf.as_mut_ptr(), 4, "hello") }.unwrap(), 5);
        assert_eq!(buf.map(|c| c as u8), *b"hel\0");
        // SAFETY: NULL with 0 counts.
        assert_eq!(unsafe { write_text(std::ptr::null_mut(), 0, "hello") }.unwrap(), 5);
    }
}
