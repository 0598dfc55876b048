//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624) on 16-bit words
//! exactly as they sit in the packet: a native load of network-order bytes. One's-complement
//! sums do not depend on byte order as long as every term is read the same way.

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum after one 16-bit word changed from `old` to `new` (RFC 1624 eqn. 3:
/// HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// The checksum after a 32-bit field (an address) changed.
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let s = u32::from(!check)
        + u32::from(!(old as u16))
        + u32::from(!((old >> 16) as u16))
        + (new & 0xffff)
        + (new >> 16);
    !fold(s)
}

/// The checksum of a 20-byte IPv4 header (without options) whose checksum field is zero,
/// given as the five 32-bit words it is stored as.
#[inline(always)]
pub fn ipv4_header(words: &[u32; 5]) -> u16 {
    let mut s = 0u32;
    let mut i = 0;
    while i < 5 {
        s += (words[i] & 0xffff) + (words[i] >> 16);
        i += 1;
    }
    !fold(s)
}
