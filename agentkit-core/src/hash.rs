//! [`stable_hash`]: one hash for sticky assignment and bucketing.

/// FNV-1a (64-bit) of `bytes`: the same in every process, on every instance and in every
/// build, unlike `std`'s hashers, so a caller lands in the same canary side, flag bucket or
/// embedding bucket everywhere. Not for security: anyone can find collisions.
pub fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::stable_hash;

    #[test]
    fn matches_the_published_fnv_1a_values() {
        assert_eq!(stable_hash(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(*b"foobar"), 0x8594_4171_f739_67e8);
    }
}
