//! Hash functions the data path and the control plane must agree on: where the sh, dh and mh
//! schedulers look a client up, and the Maglev permutation of a server.
//!
//! Addresses and ports are given in host byte order here. An IPv6 address enters every hash
//! as IPVS folds it for AF_INET6: `Addr::sched_key` (the XOR of its four words).

use crate::size::SH_BUCKETS;

/// The kernel's `hash_32` (multiplicative hashing with `GOLDEN_RATIO_32`).
#[inline(always)]
pub const fn hash_32(val: u32, bits: u32) -> u32 {
    val.wrapping_mul(0x61c8_8647) >> (32 - bits)
}

/// IPVS sh/dh bucket of `addr` (+ `port` with sh-port; 0 otherwise), shifted by `offset`
/// for the fallback walk: `ip_vs_sh_hashkey`.
#[inline(always)]
pub const fn sh_bucket(addr: u32, port: u16, offset: u32) -> u32 {
    (offset + hash_32((port as u32).wrapping_add(addr), 8)) % SH_BUCKETS
}

/// A 32-bit finaliser (MurmurHash3's): every input bit affects every output bit.
#[inline(always)]
pub const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Where the mh (Maglev) scheduler looks a client up, before `% table size`; `offset` > 0
/// gives the n-th alternative for mh-fallback (as IPVS re-hashes with the offset).
#[inline(always)]
pub const fn mh_hash(addr: u32, port: u16, offset: u32) -> u32 {
    mix32(addr ^ mix32((port as u32) ^ offset.wrapping_mul(0x9e37_79b9) ^ 0x5bd1_e995))
}

/// The two hashes of a server that make its Maglev permutation (offset and skip), from its
/// address and port: deterministic, so every director builds the same table.
#[inline(always)]
pub const fn mh_server(addr: u32, port: u16) -> (u32, u32) {
    let a = mix32(addr ^ 0x2545_f491);
    let b = mix32(a ^ (port as u32) ^ 0x6c8e_9cf5);
    (mix32(b ^ 0x1b87_3593), mix32(b ^ 0xcc9e_2d51))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_32_matches_the_kernel() {
        // hash_32(1, 8) = (0x61c88647 >> 24) = 0x61.
        assert_eq!(hash_32(1, 8), 0x61);
        assert_eq!(hash_32(0, 8), 0);
    }

    #[test]
    fn sh_buckets_stay_in_range_and_offset_walks_them() {
        let b = sh_bucket(0xc0000201, 0, 0);
        assert!(b < SH_BUCKETS);
        assert_eq!(sh_bucket(0xc0000201, 0, 1), (b + 1) % SH_BUCKETS);
        assert_ne!(sh_bucket(0xc0000201, 80, 0), sh_bucket(0xc0000201, 81, 0));
    }

    #[test]
    fn mh_hash_spreads() {
        let m = 65537u32;
        let mut seen = [0u32; 16];
        for a in 0..4096u32 {
            seen[(mh_hash(0xc6336400 + a, 0, 0) % m * 16 / m) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (200..=320).contains(&n)), "{seen:?}");
    }
}
