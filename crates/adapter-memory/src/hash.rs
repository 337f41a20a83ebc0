//! A cheap hasher for ids the storage generates itself (lease and consumer
//! ids). They are UUIDv7 with 62+ random bits, so a multiply-fold spreads them
//! well; SipHash would cost more than the rest of a map lookup. Ids chosen by
//! callers (proxy and pool ids) keep the standard hasher.

use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-fold hasher for storage-generated UUIDs.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(23) ^ u64::from_le_bytes(buf)).wrapping_mul(K);
        }
    }

    fn write_usize(&mut self, _len: usize) {
        // Only ever the length prefix of the 16-byte array: constant, skip it.
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// `BuildHasher` for [`IdHasher`].
pub(crate) type IdBuildHasher = BuildHasherDefault<IdHasher>;
