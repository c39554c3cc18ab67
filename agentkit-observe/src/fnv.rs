//! A hasher for the observer's caches of names (agents, models, tools): short keys from
//! configuration, looked up several times per run, where SipHash's resistance to chosen keys
//! buys nothing and costs most of each lookup.

use std::hash::{BuildHasherDefault, Hasher};

/// Builds [`Fnv`] hashers, for `HashMap`s keyed by names.
pub(crate) type FnvBuild = BuildHasherDefault<Fnv>;

/// FNV-1a, 64-bit.
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
