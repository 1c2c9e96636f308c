//! The shard function: which shard a metric ID belongs to.
//!
//! M3 shards by murmur3 x86 32-bit (seed 0) of the raw ID bytes, modulo the number of shards
//! (`hashType: murmur32`, the only valid type). Clients, aggregators and m3msg producers must all
//! agree on it bit for bit, or writes land on instances that do not own them; so it lives here,
//! once, and is tested against the published vectors of Go's `spaolacci/murmur3` `Sum32`, which
//! M3's hash matches.

/// murmur3 x86 32-bit of `bytes` with seed 0 (Go's `murmur3.Sum32`).
pub fn murmur3_32(bytes: &[u8]) -> u32 {
    mur3::murmurhash3_x86_32(bytes, 0)
}

/// The shard of `id` among `num_shards` shards: `murmur3_32(id) % num_shards`.
///
/// A placement always has at least one shard; for `num_shards == 0` (no shard exists) this
/// returns 0 instead of dividing by zero.
pub fn shard_for(id: &[u8], num_shards: u32) -> u32 {
    murmur3_32(id).checked_rem(num_shards).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_go_murmur3_sum32_vectors() {
        let vectors: &[(&str, u32)] = &[
            ("", 0x0000_0000),
            ("hello", 0x248b_fa47),
            ("hello, world", 0x149b_bb7f),
            ("19 Jan 2038 at 3:14:07 AM", 0xe31e_8a70),
            ("The quick brown fox jumps over the lazy dog.", 0xd5c4_8bfc),
        ];
        for (input, want) in vectors {
            assert_eq!(murmur3_32(input.as_bytes()), *want, "murmur3_32({input:?})");
        }
    }

    #[test]
    fn shard_is_hash_mod_num_shards() {
        assert_eq!(shard_for(b"hello", 64), 0x248b_fa47 % 64);
        assert_eq!(shard_for(b"hello", 1), 0);
        assert_eq!(shard_for(b"hello", 0), 0);
    }
}
