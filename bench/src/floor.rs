//! The store's floor: the sled writes one reconcile makes per delivery (the
//! delivery by its hashed id, the due index, the per-post index and the
//! audit record), made straight into sled in batches with no herald code
//! around them. herald's first reconcile cannot be faster than this on the
//! same disk and cores; the difference is herald's own work.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Floor {
    pub deliveries: usize,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub per_s: f64,
}

/// A stand-in for a 16-byte delivery id: spread like a hash.
pub(crate) fn id(n: u64) -> [u8; 16] {
    let mut x = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    out
}

pub fn measure(dir: &Path, deliveries: usize, cache_mb: u64) -> anyhow::Result<Floor> {
    let db = sled::Config::new()
        .path(dir.join("floor-db"))
        .cache_capacity(cache_mb * 1024 * 1024)
        .flush_every_ms(Some(500))
        .open()?;
    let trees = ["deliveries", "due", "by_post", "audit"].map(|name| db.open_tree(name));
    let [deliveries_tree, due, by_post, audit] = trees;
    let (deliveries_tree, due, by_post, audit) = (deliveries_tree?, due?, by_post?, audit?);
    // Values the size of herald's JSON records.
    let delivery_value = vec![b'd'; 330];
    let audit_value = vec![b'a'; 430];
    let cpu_before = crate::procs::cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
    let started = Instant::now();
    let mut seq = 0u64;
    for start in (0..deliveries as u64).step_by(2_000) {
        let mut batches: [sled::Batch; 4] = Default::default();
        for n in start..(start + 2_000).min(deliveries as u64) {
            let post = n / 100;
            let key = id(n);
            batches[0].insert(&key, delivery_value.as_slice());
            let mut due_key = (1_800_000_000_000 + post * 60_000).to_be_bytes().to_vec();
            due_key.extend_from_slice(&key);
            batches[1].insert(due_key, &b"city-0001"[..]);
            let mut post_key = format!("load-{post:06}").into_bytes();
            post_key.push(0);
            post_key.extend_from_slice(&(1_800_000_000_000 + post * 60_000).to_be_bytes());
            post_key.extend_from_slice(&key);
            batches[2].insert(post_key, &[][..]);
            seq += 1;
            batches[3].insert(&seq.to_be_bytes(), audit_value.as_slice());
        }
        let [a, b, c, d] = batches;
        deliveries_tree.apply_batch(a)?;
        due.apply_batch(b)?;
        by_post.apply_batch(c)?;
        audit.apply_batch(d)?;
    }
    db.flush()?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = crate::procs::cpu_seconds(std::process::id()).unwrap_or(f64::NAN) - cpu_before;
    drop(db);
    std::fs::remove_dir_all(dir.join("floor-db"))?;
    Ok(Floor { deliveries, seconds, cpu_seconds, per_s: deliveries as f64 / seconds })
}
