//! Copying label names and values, the innermost step of the write path.
//!
//! Every series of every request has its labels copied: into its tag-encoded ID for the
//! aggregators, into the label text the store keeps. Names and values are short (most under
//! 32 bytes), and a copy whose length is known only at run time is a call into `memcpy`,
//! whose cost is mostly the call and its dispatch on the length: encoding the IDs of a
//! 2,000-series request took a quarter less time once the short ones were copied as below
//! (`id_shard/encode_tags` in the coordinator's benches).

/// The longest part [`push_short`] copies without a call to `memcpy`, and the spare capacity
/// a caller reserves beyond the part for it.
pub const SHORT_PART: usize = 32;

/// Appends `part` to `out`. Up to [`SHORT_PART`] bytes, [`SHORT_PART`] zeros are appended (one
/// fixed-size store), then two copies of a fixed size that overlap in the middle cover the
/// part (its first and its last 16, 8 or 4 bytes, the largest that fits), and the excess is cut
/// off again. With `SHORT_PART` bytes of room reserved beyond the part, each step is a few
/// moves the compiler writes inline. Longer parts are copied with `memcpy`.
#[inline(always)]
pub fn push_short(out: &mut Vec<u8>, part: &[u8]) {
    let n = part.len();
    if n > SHORT_PART {
        out.extend_from_slice(part);
        return;
    }
    let start = out.len();
    out.extend_from_slice(&[0; SHORT_PART]);
    let to = &mut out[start..start + n];
    if n >= 16 {
        to[..16].copy_from_slice(&part[..16]);
        to[n - 16..].copy_from_slice(&part[n - 16..]);
    } else if n >= 8 {
        to[..8].copy_from_slice(&part[..8]);
        to[n - 8..].copy_from_slice(&part[n - 8..]);
    } else if n >= 4 {
        to[..4].copy_from_slice(&part[..4]);
        to[n - 4..].copy_from_slice(&part[n - 4..]);
    } else {
        for (to, from) in to.iter_mut().zip(part) {
            *to = *from;
        }
    }
    out.truncate(start + n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_appended_whole_at_every_length() {
        for len in 0..=2 * SHORT_PART + 1 {
            let part: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            // After nothing, and after bytes already there; with the room reserved and not.
            for (before, reserve) in [(0, true), (3, true), (5, false)] {
                let mut out = vec![0xAA; before];
                if reserve {
                    out.reserve(len + SHORT_PART);
                }
                push_short(&mut out, &part);
                assert_eq!(out.len(), before + len, "len {len}");
                assert_eq!(&out[before..], &part[..], "len {len}");
                assert!(out[..before].iter().all(|&b| b == 0xAA));
            }
        }
    }
}
