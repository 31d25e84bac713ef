//! The replay guard: signed query strings seen recently, so that one replayed with a different body is refused (plain mode's signature does not cover the body); kept here or, shared by replicas, in NATS.

use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// A signature seen with a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRecord {
    pub account: String,
    /// The request's `signature`, lower-case hex.
    pub signature: String,
    /// The request's `timestamp`.
    pub timestamp: u64,
    /// SHA-256 of the body it came with.
    pub body_hash: [u8; 32],
}

/// What the guard says of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before (now remembered).
    New,
    /// Seen with this very body: a retry.
    SameBody,
    /// Seen with another body: a replay.
    OtherBody,
}

/// Where signed queries are remembered.
pub enum ReplayGuard {
    /// In this process (and its spool, across restarts).
    Local(SeenSignatures),
    /// In a JetStream bucket every replica shares.
    Shared(Box<super::seen_nats::SharedSeen>),
}

impl ReplayGuard {
    /// Checks a request and remembers it (see [`SeenSignatures::check`]).
    pub async fn check(
        &self,
        record: &SeenRecord,
        nonce: &str,
        oldest: u64,
    ) -> Result<Seen, super::seen_nats::GuardError> {
        match self {
            ReplayGuard::Local(seen) => Ok(seen.check(record, oldest)),
            // Boxed: the NATS client's futures are large, and unboxed they would grow every
            // request's future, whichever guard is in force.
            ReplayGuard::Shared(shared) => Box::pin(shared.check(record, nonce)).await,
        }
    }

    /// Whether the spool must keep the record (to remember it across a restart).
    pub fn spooled(&self) -> bool {
        matches!(self, ReplayGuard::Local(_))
    }
}

/// Bounded memory of recent signatures, oldest forgotten first.
pub struct SeenSignatures {
    capacity: usize,
    inner: Mutex<Inner>,
}

/// Entries are keyed by 16 bytes of SHA-256(account, signature): fixed-size keys keep
/// 100,000 of them in about 8 MiB, where strings took four times that.
#[derive(Default)]
struct Inner {
    map: HashMap<u128, (u64, [u8; 32])>,
    order: VecDeque<(u128, u64)>,
}

fn key(record: &SeenRecord) -> u128 {
    let digest = Sha256::new()
        .chain_update(record.account.as_bytes())
        .chain_update([0])
        .chain_update(record.signature.as_bytes())
        .finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

impl SeenSignatures {
    pub fn new(capacity: usize) -> SeenSignatures {
        SeenSignatures {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Checks a request and remembers it; entries older than `oldest` (a Unix timestamp)
    /// are forgotten first, as requests that old fail the freshness check anyway.
    pub fn check(&self, record: &SeenRecord, oldest: u64) -> Seen {
        let Ok(mut inner) = self.inner.lock() else {
            return Seen::New;
        };
        while let Some(&(old, ts)) = inner.order.front() {
            if ts >= oldest && inner.order.len() < self.capacity {
                break;
            }
            inner.order.pop_front();
            if inner.map.get(&old).is_some_and(|(t, _)| *t == ts) {
                inner.map.remove(&old);
            }
        }
        let key = key(record);
        match inner.map.get(&key) {
            Some((_, hash)) if *hash == record.body_hash => Seen::SameBody,
            Some(_) => Seen::OtherBody,
            None => {
                inner.map.insert(key, (record.timestamp, record.body_hash));
                inner.order.push_back((key, record.timestamp));
                Seen::New
            }
        }
    }

    /// Remembers records loaded from the spool at start-up.
    pub fn preload(&self, records: impl IntoIterator<Item = SeenRecord>, oldest: u64) {
        for record in records {
            self.check(&record, oldest);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sig: &str, ts: u64, body: u8) -> SeenRecord {
        SeenRecord {
            account: "a".into(),
            signature: sig.into(),
            timestamp: ts,
            body_hash: [body; 32],
        }
    }

    #[test]
    fn replays_with_other_bodies_are_caught_and_memory_is_bounded() {
        let seen = SeenSignatures::new(3);
        assert_eq!(seen.check(&rec("s1", 100, 1), 0), Seen::New);
        assert_eq!(seen.check(&rec("s1", 100, 1), 0), Seen::SameBody);
        assert_eq!(seen.check(&rec("s1", 100, 2), 0), Seen::OtherBody);
        for i in 0..10 {
            seen.check(&rec(&format!("x{i}"), 100 + i, 1), 0);
        }
        assert!(seen.len() <= 3);
        // Old entries go once they are past the window.
        assert_eq!(seen.check(&rec("late", 500, 1), 400), Seen::New);
        assert_eq!(seen.len(), 1);
    }
}
