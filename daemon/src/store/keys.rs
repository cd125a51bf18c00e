//! Byte layouts of the store's keys. Big-endian numbers keep sled's
//! lexicographic order equal to numeric order.

use crate::model::{DeliveryId, Millis};

/// Order-preserving bytes of a signed instant.
pub fn millis(t: Millis) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn read_millis(bytes: &[u8]) -> Option<Millis> {
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(arr) ^ (1 << 63)) as i64)
}

/// due index: due time, then delivery id.
pub fn due(t: Millis, id: &DeliveryId) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(&millis(t));
    k.extend_from_slice(&id.0);
    k
}

pub fn read_due(key: &[u8]) -> Option<(Millis, DeliveryId)> {
    let t = read_millis(key)?;
    let id: [u8; 16] = key.get(8..24)?.try_into().ok()?;
    Some((t, DeliveryId(id)))
}

/// per-post index: post id, a 0 byte, occurrence, delivery id.
pub fn by_post(post: &str, occurrence: Millis, id: &DeliveryId) -> Vec<u8> {
    let mut k = by_post_prefix(post);
    k.extend_from_slice(&millis(occurrence));
    k.extend_from_slice(&id.0);
    k
}

pub fn by_post_prefix(post: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(post.len() + 25);
    k.extend_from_slice(post.as_bytes());
    k.push(0);
    k
}

pub fn read_by_post_id(key: &[u8]) -> Option<DeliveryId> {
    let id: [u8; 16] = key.get(key.len().checked_sub(16)?..)?.try_into().ok()?;
    Some(DeliveryId(id))
}

/// timer index: when, then post id.
pub fn timer(t: Millis, post: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + post.len());
    k.extend_from_slice(&millis(t));
    k.extend_from_slice(post.as_bytes());
    k
}

pub fn read_timer(key: &[u8]) -> Option<(Millis, String)> {
    let t = read_millis(key)?;
    let post = std::str::from_utf8(key.get(8..)?).ok()?;
    Some((t, post.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_sort_as_numbers_including_before_1970() {
        let mut ts = [-5_000i64, 0, 1_700_000_000_000, -1, 42];
        let mut keys: Vec<_> = ts.iter().map(|t| millis(*t)).collect();
        keys.sort();
        ts.sort();
        assert_eq!(keys.iter().map(|k| read_millis(k).unwrap()).collect::<Vec<_>>(), ts);
    }
}
