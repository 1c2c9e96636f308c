//! LEB128 varints, seven bits a byte, low bits first: the lengths of a packed label set and
//! the deltas of the write-ahead log's sample records. Small numbers take one byte.

/// Appends `n`.
pub(crate) fn put(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads one varint off the front of `bytes`: `None` when it is cut short or longer than ten
/// bytes.
pub(crate) fn take(bytes: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        n |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte < 0x80 {
            return Some(n);
        }
    }
    None
}

/// A signed number as an unsigned one that is small when its magnitude is: 0, -1, 1, -2…
/// become 0, 1, 2, 3…
pub(crate) fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

/// The inverse of [`zigzag`].
pub(crate) fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn numbers_read_back_and_small_ones_take_one_byte(n in any::<u64>(), s in any::<i64>()) {
            let mut out = Vec::new();
            put(&mut out, n);
            put(&mut out, zigzag(s));
            let mut bytes = &out[..];
            prop_assert_eq!(take(&mut bytes), Some(n));
            prop_assert_eq!(take(&mut bytes).map(unzigzag), Some(s));
            prop_assert!(bytes.is_empty());
            let mut small = Vec::new();
            put(&mut small, zigzag(-64));
            put(&mut small, zigzag(63));
            prop_assert_eq!(small.len(), 2);
        }

        #[test]
        fn any_bytes_read_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let mut rest = &bytes[..];
            while take(&mut rest).is_some() {}
        }
    }
}
