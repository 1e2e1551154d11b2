//! A hasher for integer keys this process made itself: scope ids, correlation ids, graph
//! ids, the addresses of interned names. One add and one multiply per integer.
//!
//! FNV, which these maps used before, hashes a `u64` byte by byte: eight multiplies in a
//! dependent chain, about 30 cycles. In fine mode the collector looks up three or four such
//! keys per kernel (the step's unit twice, the classifier's and the decoder's name caches
//! once each), and `perf` put FNV's multiply chain at a tenth of the collector thread's
//! time (issue 14, item 1).
//!
//! The hasher is rustc-hash 2's `FxHasher` (the hasher rustc itself uses for such keys,
//! <https://github.com/rust-lang/rustc-hash>): `hash = (hash + word) * K` per word, then a
//! rotation in `finish` that brings the well-mixed high bits down to the low bits hashbrown
//! indexes its buckets with (an address, a multiple of 8 or 16, would otherwise leave the
//! low bits zero). It is not a defence against chosen keys: use it only for keys no
//! outsider picks (nothing from a file, a socket or a trace).

/// Builds the hashers of these maps (stateless: every map hashes a key the same way).
pub type IdBuildHasher = rustc_hash::FxBuildHasher;

/// A `HashMap` keyed by ids this process made (module docs).
pub type IdHashMap<K, V> = std::collections::HashMap<K, V, IdBuildHasher>;

/// A `HashSet` of ids this process made (module docs).
pub type IdHashSet<K> = std::collections::HashSet<K, IdBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn hash_of<T: std::hash::Hash>(v: T) -> u64 {
        IdBuildHasher::default().hash_one(v)
    }

    #[test]
    fn aligned_addresses_spread_over_the_low_bits() {
        // Addresses of 16-byte-aligned allocations: without the final rotation the low 4
        // bits of every hash would be zero, and hashbrown indexes by the low bits.
        let low: std::collections::HashSet<u64> = (0..4096u64).map(|i| hash_of(0x5555_0000_0000 + i * 16) & 0xff).collect();
        assert!(low.len() > 200, "{} distinct low bytes of 256", low.len());
    }

    #[test]
    fn byte_strings_differ_by_content_and_length() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..=24usize {
            let zeros = vec![0u8; n];
            assert!(seen.insert(hash_of(&zeros[..])), "zero bytes of length {n} collide");
        }
        assert_ne!(hash_of(&b"attention"[..]), hash_of(&b"attentioN"[..]));
    }

    #[test]
    fn maps_work() {
        let mut m: IdHashMap<u64, u32> = IdHashMap::default();
        for i in 0..10_000u64 {
            m.insert(i * 16, i as u32);
        }
        assert!((0..10_000u64).all(|i| m[&(i * 16)] == i as u32));
        let s: IdHashSet<u32> = (0..100).collect();
        assert!(s.contains(&99) && !s.contains(&100));
    }
}
