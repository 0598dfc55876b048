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

/// Loads the 32-bit word at `p + OFF`, whatever its alignment, as the bytes sit in memory
/// (a native-endian read). For packet and map memory only: the x86-64 and arm64 JITs allow
/// misaligned access there (the verifier refuses it on the stack). Written out because
/// LLVM, which must assume strict alignment for BPF, reads a packed header's `[u8; 4]` a
/// byte at a time and puts it together with shifts and ors (about four instructions a byte
/// on every packet); and turning misaligned access on for the whole object lets LLVM merge
/// stack stores into misaligned ones the verifier rejects.
#[inline(always)]
pub unsafe fn load32<const OFF: i16>(p: *const u8) -> u32 {
    let v: u64;
    // SAFETY: the caller bounds-checked `p + OFF .. p + OFF + 4` (packet) or owns it (map
    // value); a plain load, no side effects.
    unsafe {
        core::arch::asm!(
            "{v} = *(u32 *)({p} + {off})",
            v = out(reg) v,
            p = in(reg) p,
            off = const OFF,
            options(readonly, nostack, preserves_flags),
        );
    }
    v as u32
}

/// The 16-bit `load32`.
#[inline(always)]
pub unsafe fn load16<const OFF: i16>(p: *const u8) -> u16 {
    let v: u64;
    // SAFETY: as `load32`, for 2 bytes.
    unsafe {
        core::arch::asm!(
            "{v} = *(u16 *)({p} + {off})",
            v = out(reg) v,
            p = in(reg) p,
            off = const OFF,
            options(readonly, nostack, preserves_flags),
        );
    }
    v as u16
}

/// Stores the 32-bit word `v` at `p + OFF`, whatever its alignment (packet or map memory:
/// see `load32`).
#[inline(always)]
pub unsafe fn store32<const OFF: i16>(p: *mut u8, v: u32) {
    // SAFETY: the caller bounds-checked `p + OFF .. p + OFF + 4`.
    unsafe {
        core::arch::asm!(
            "*(u32 *)({p} + {off}) = {v}",
            p = in(reg) p,
            v = in(reg) v as u64,
            off = const OFF,
            options(nostack, preserves_flags),
        );
    }
}

/// The 16-bit `store32`.
#[inline(always)]
pub unsafe fn store16<const OFF: i16>(p: *mut u8, v: u16) {
    // SAFETY: as `store32`, for 2 bytes.
    unsafe {
        core::arch::asm!(
            "*(u16 *)({p} + {off}) = {v}",
            p = in(reg) p,
            v = in(reg) v as u64,
            off = const OFF,
            options(nostack, preserves_flags),
        );
    }
}
