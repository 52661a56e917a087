//! A keyed permutation of a small domain `0..n`, for date ranges too narrow for FF1.
//!
//! FF1 needs at least 1,000,000 possible values (NIST SP 800-38G Rev. 1): below that its Feistel
//! structure is open to known message-recovery attacks. A plausible date range (say 1900-2099,
//! 73,049 days) is far smaller. For such domains this is the *prefix cipher* of Black and
//! Rogaway ("Ciphers with Arbitrary Finite Domains", CT-RSA 2002): encrypt every element of the
//! domain with AES-256 and rank the ciphertexts; the permutation sends `i` to the rank of
//! `AES(i)`. As AES is a pseudorandom permutation, this is a pseudorandom permutation of `0..n`
//! with no Feistel rounds to attack, for any `n`. It costs `n` AES calls and a sort once per
//! (key, label, range), then a table look-up per value.
//!
//! What no keyed permutation of a small domain can hide is documented in docs/protect.md: equal
//! values give equal tokens, and a role that can write chosen values and read their tokens can
//! tabulate the whole domain (for 73,049 days, 73,049 writes).
use super::super::keys::Key;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The largest domain built as a table (FF1 takes over from 1,000,000).
pub const MAX_SIZE: u32 = 1_000_000;

/// The permutation and its inverse, as tables.
pub struct Permutation {
    forward: Vec<u32>,
    inverse: Vec<u32>,
}

impl std::fmt::Debug for Permutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permutation")
            .field("size", &self.forward.len())
            .finish_non_exhaustive()
    }
}

/// Built tables, keyed by a one-way hash of the subkey and size (no key material is kept
/// here), shared by every tokenizer of the same key, label and range.
static TABLES: OnceLock<Mutex<HashMap<[u8; 32], Arc<Permutation>>>> = OnceLock::new();

/// At most this many tables are kept (each is 8 bytes per element).
const MAX_TABLES: usize = 32;

impl Permutation {
    /// The permutation of `0..size` for `key` and `tweak` (the tokenizer's label and format).
    pub fn get(key: &Key, tweak: &[u8], size: u32) -> Arc<Permutation> {
        // A subkey of its own, so the AES calls here never coincide with FF1's under the key.
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"tokengate/prefix/v1\0");
        mac.update(tweak);
        let subkey = zeroize::Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()));
        let id: [u8; 32] = Sha256::new()
            .chain_update(subkey.as_slice())
            .chain_update(size.to_be_bytes())
            .finalize()
            .into();
        let tables = TABLES.get_or_init(Mutex::default);
        if let Some(table) = tables.lock().ok().and_then(|t| t.get(&id).cloned()) {
            return table;
        }
        let table = Arc::new(Permutation::build(&subkey, size));
        if let Ok(mut t) = tables.lock() {
            if t.len() >= MAX_TABLES {
                t.clear();
            }
            t.insert(id, table.clone());
        }
        table
    }

    fn build(subkey: &[u8; 32], size: u32) -> Permutation {
        let aes = aes::Aes256::new(&Array::from(*subkey));
        let mut ranked: Vec<(u128, u32)> = (0..size)
            .map(|i| {
                let mut block = Array::from(u128::from(i).to_be_bytes());
                aes.encrypt_block(&mut block);
                (u128::from_be_bytes(block.into()), i)
            })
            .collect();
        // AES is a permutation of 128-bit blocks: distinct inputs, distinct sort keys.
        ranked.sort_unstable_by_key(|&(c, _)| c);
        let mut forward = vec![0u32; size as usize];
        let mut inverse = vec![0u32; size as usize];
        for (rank, &(_, i)) in ranked.iter().enumerate() {
            forward[i as usize] = rank as u32;
            inverse[rank] = i;
        }
        Permutation { forward, inverse }
    }

    pub fn size(&self) -> u32 {
        self.forward.len() as u32
    }

    /// The image of `i`; `None` outside the domain.
    pub fn forward(&self, i: u32) -> Option<u32> {
        self.forward.get(i as usize).copied()
    }

    /// The preimage of `i`; `None` outside the domain.
    pub fn inverse(&self, i: u32) -> Option<u32> {
        self.inverse.get(i as usize).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_a_keyed_bijection_with_its_inverse() {
        let key = Key::from_bytes([7; 32]);
        let p = Permutation::get(&key, b"date\0dob", 73_049);
        assert_eq!(p.size(), 73_049);
        let mut seen = vec![false; 73_049];
        for i in 0..73_049 {
            let j = p.forward(i).unwrap();
            assert!(!std::mem::replace(&mut seen[j as usize], true));
            assert_eq!(p.inverse(j), Some(i));
        }
        assert_eq!(p.forward(73_049), None);
        // Not the identity, and different per tweak and per key.
        let moved = (0..1000).filter(|&i| p.forward(i) != Some(i)).count();
        assert!(moved > 990, "{moved}");
        let other_label = Permutation::get(&key, b"date\0other", 73_049);
        let other_key = Permutation::get(&Key::from_bytes([8; 32]), b"date\0dob", 73_049);
        for q in [other_label, other_key] {
            let same = (0..1000).filter(|&i| p.forward(i) == q.forward(i)).count();
            assert!(same < 10, "{same}");
        }
        // Deterministic: the same inputs give the same (cached or rebuilt) table.
        let again = Permutation::build(
            &{
                let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&[7; 32]).unwrap();
                mac.update(b"tokengate/prefix/v1\0");
                mac.update(b"date\0dob");
                <[u8; 32]>::from(mac.finalize().into_bytes())
            },
            73_049,
        );
        assert!((0..73_049).all(|i| again.forward(i) == p.forward(i)));
    }
}
