//! What more than one of lb-ctl's integration tests needs (a module, not a test target:
//! cargo builds `tests/common/mod.rs` only where a test says `mod common;`).

/// The seed of a fuzz run: `LB_FUZZ_SEED` (decimal or 0x-hex) replays one, else a fresh one.
/// Print it before running, so a failure can be replayed.
pub fn fuzz_seed() -> u64 {
    match std::env::var("LB_FUZZ_SEED") {
        Ok(s) => {
            let s = s.trim();
            s.strip_prefix("0x")
                .map_or_else(|| s.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| panic!("LB_FUZZ_SEED={s:?} is not a number"))
        }
        Err(_) => fastrand::u64(..),
    }
}
