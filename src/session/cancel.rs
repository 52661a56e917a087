//! Cancel keys. Each client gets its own BackendKeyData from tokengate; this registry maps it
//! to the upstream backend's key so a CancelRequest reaches the right server process.
use crate::wire::startup::CancelKey;
use dashmap::DashMap;
use rand::Rng;

#[derive(Debug, Default)]
pub struct CancelRegistry {
    by_client_pid: DashMap<u32, Entry>,
}

#[derive(Debug)]
struct Entry {
    client: CancelKey,
    upstream: CancelKey,
}

impl CancelRegistry {
    /// Issues a client-facing key for `upstream` with a secret of the same length (4 bytes in
    /// protocol 3.0, longer in 3.2) and registers it. The pid is random so keys don't reveal
    /// how many sessions exist.
    pub fn register(&self, upstream: CancelKey) -> CancelKey {
        let mut rng = rand::rng();
        loop {
            let pid = rng.random_range(1..=i32::MAX as u32);
            let mut secret = vec![0u8; upstream.secret.len()];
            rng.fill(&mut secret[..]);
            let client = CancelKey { pid, secret };
            if let dashmap::Entry::Vacant(slot) = self.by_client_pid.entry(pid) {
                slot.insert(Entry {
                    client: client.clone(),
                    upstream,
                });
                return client;
            }
        }
    }

    pub fn unregister(&self, client_pid: u32) {
        self.by_client_pid.remove(&client_pid);
    }

    /// The upstream key for a client's cancel request, if pid and secret both match.
    pub fn resolve(&self, presented: &CancelKey) -> Option<CancelKey> {
        let entry = self.by_client_pid.get(&presented.pid)?;
        entry
            .client
            .matches(presented)
            .then(|| entry.upstream.clone())
    }

    pub fn len(&self) -> usize {
        self.by_client_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client_pid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_only_the_exact_key() {
        let reg = CancelRegistry::default();
        let upstream = CancelKey {
            pid: 777,
            secret: vec![1, 2, 3, 4],
        };
        let client = reg.register(upstream.clone());
        assert_eq!(client.secret.len(), 4);
        assert_ne!(client.secret, upstream.secret);
        assert_eq!(reg.resolve(&client), Some(upstream));
        let mut wrong = client.clone();
        wrong.secret[0] ^= 1;
        assert_eq!(reg.resolve(&wrong), None);
        reg.unregister(client.pid);
        assert_eq!(reg.resolve(&client), None);
        assert!(reg.is_empty());
    }

    #[test]
    fn long_secrets_keep_their_length() {
        let reg = CancelRegistry::default();
        let client = reg.register(CancelKey {
            pid: 1,
            secret: vec![9; 32],
        });
        assert_eq!(client.secret.len(), 32);
    }
}
