//! Zero-initialisation that stays inline: zeroing a struct of a few dozen bytes the usual
//! way (`[0; 6]` fields, a struct literal, `MaybeUninit::zeroed`, or even returning a zeroed
//! value) compiles to a call into a byte-loop `memset` subprogram; there were 24 such calls on
//! the hot paths.

use core::mem::MaybeUninit;

/// `T` on an 8-byte boundary, for structs (like `bpf_fib_lookup`) that are only 4-aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Align8<T>(pub T);

/// Zeroes `slot` in place with volatile 8-byte stores (which LLVM cannot merge back into a
/// memset) and returns it initialised. `T` must be plain data, 8-aligned, whose size is a
/// multiple of 8.
#[inline(always)]
pub fn zero<T: Copy>(slot: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(core::mem::size_of::<T>() % 8 == 0 && core::mem::align_of::<T>() >= 8) };
    let p = slot.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: in bounds of `slot` and aligned (asserted above).
        unsafe { p.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte is initialised, and T is plain data.
    unsafe { slot.assume_init_mut() }
}

/// Copies `N` words with volatile accesses (which LLVM cannot turn into a byte-loop
/// `memcpy` call).
#[inline(always)]
pub fn copy_words<const N: usize>(dst: &mut [u32; N], src: *const [u32; N]) {
    let (d, s) = (dst.as_mut_ptr(), src as *const u32);
    let mut i = 0;
    while i < N {
        // SAFETY: both in bounds of an `N`-word array.
        unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) };
        i += 1;
    }
}
