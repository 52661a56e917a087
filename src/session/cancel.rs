//! Cancel keys. Each client sees the upstream backend's real pid (so `PQbackendPID()`,
//! `pg_backend_pid()`, NotificationResponse pids and `pg_terminate_backend` agree), but a
//! secret of tokengate's own. This registry maps (pid, tokengate secret) to the upstream's key,
//! so a CancelRequest reaches the right server process only with the secret tokengate issued;
//! a client never learns the server's secret, and unknown keys are dropped.
use crate::wire::startup::CancelKey;
use dashmap::DashMap;
use rand::Rng;

/// Live sessions by backend pid. A pid normally has one entry; a second appears only in the
/// moment between a backend exiting and its session being unregistered, if the server has
/// already reused the pid.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    by_pid: DashMap<u32, Vec<Entry>>,
}

#[derive(Debug)]
struct Entry {
    client: CancelKey,
    upstream: CancelKey,
}

impl CancelRegistry {
    /// Issues the client-facing key for `upstream`: the same pid, and a random secret of the
    /// same length (4 bytes in protocol 3.0, up to 256 in 3.2). Registers it.
    pub fn register(&self, upstream: CancelKey) -> CancelKey {
        let mut secret = vec![0u8; upstream.secret.len()];
        rand::rng().fill(&mut secret[..]);
        let client = CancelKey {
            pid: upstream.pid,
            secret,
        };
        self.by_pid.entry(client.pid).or_default().push(Entry {
            client: client.clone(),
            upstream,
        });
        client
    }

    /// Forgets the key issued to a session that ended.
    pub fn unregister(&self, client: &CancelKey) {
        if let dashmap::Entry::Occupied(mut slot) = self.by_pid.entry(client.pid) {
            slot.get_mut().retain(|e| !e.client.matches(client));
            if slot.get().is_empty() {
                slot.remove();
            }
        }
    }

    /// The upstream key for a client's cancel request, if pid and secret both match.
    pub fn resolve(&self, presented: &CancelKey) -> Option<CancelKey> {
        let entries = self.by_pid.get(&presented.pid)?;
        entries
            .iter()
            .find(|e| e.client.matches(presented))
            .map(|e| e.upstream.clone())
    }

    pub fn len(&self) -> usize {
        self.by_pid.iter().map(|e| e.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_pid_and_resolves_only_the_exact_key() {
        let reg = CancelRegistry::default();
        let upstream = CancelKey {
            pid: 777,
            secret: vec![1, 2, 3, 4],
        };
        let client = reg.register(upstream.clone());
        assert_eq!(client.pid, 777);
        assert_eq!(client.secret.len(), 4);
        assert_eq!(reg.resolve(&client), Some(upstream.clone()));
        // The server's own secret is not a valid key at tokengate (it never reaches clients).
        if upstream.secret != client.secret {
            assert_eq!(reg.resolve(&upstream), None);
        }
        let mut wrong = client.clone();
        wrong.secret[0] ^= 1;
        assert_eq!(reg.resolve(&wrong), None);
        reg.unregister(&client);
        assert_eq!(reg.resolve(&client), None);
        assert!(reg.is_empty());
    }

    #[test]
    fn a_reused_pid_keeps_both_sessions_apart() {
        let reg = CancelRegistry::default();
        let old = CancelKey {
            pid: 42,
            secret: vec![1; 4],
        };
        let new = CancelKey {
            pid: 42,
            secret: vec![2; 4],
        };
        let (a, b) = (reg.register(old.clone()), reg.register(new.clone()));
        assert_eq!(reg.len(), 2);
        reg.unregister(&a);
        assert_eq!(reg.resolve(&a), None);
        assert_eq!(reg.resolve(&b), Some(new));
    }

    #[test]
    fn long_secrets_keep_their_length() {
        let reg = CancelRegistry::default();
        let client = reg.register(CancelKey {
            pid: 1,
            secret: vec![9; 32],
        });
        assert_eq!(client.secret.len(), 32);
        assert_ne!(client.secret, vec![9; 32]);
    }
}
