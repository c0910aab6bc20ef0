//! LEB128 unsigned varints: the building block of gatemeter's compact binary blobs (the Redis
//! store's per-writer state, the request log's rollup distributions).

/// Appends `v` as an unsigned LEB128 varint.
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at `*i`, advancing it; `None` when truncated or longer than 64 bits.
pub fn get(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_truncation() {
        let values = [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX];
        let mut buf = Vec::new();
        for v in values {
            put(&mut buf, v);
        }
        let mut i = 0;
        for v in values {
            assert_eq!(get(&buf, &mut i), Some(v));
        }
        assert_eq!(i, buf.len());
        assert_eq!(get(&buf[..buf.len() - 1], &mut 0).map(|_| ()), Some(()));
        let mut j = buf.len() - 10;
        assert_eq!(
            get(&buf[..buf.len() - 1], &mut j),
            None,
            "cut inside u64::MAX"
        );
    }
}
