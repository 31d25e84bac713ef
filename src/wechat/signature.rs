//! WeChat's plain-mode signature: SHA-1 over the sorted token, timestamp and nonce, checked in constant time and for freshness.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// Why a request's signature was not accepted. The text is the reason in the 401 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing query parameter `{0}`")]
    Missing(&'static str),
    #[error("signature does not match")]
    Mismatch,
    #[error("msg_signature does not match")]
    MsgMismatch,
    #[error("timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("timestamp is {0} s away from the server's clock (tolerance {1} s)")]
    Stale(u64, u64),
}

/// `sha1(sorted(parts).concat())`, the digest behind every WeChat signature.
pub fn digest(parts: &mut [&str]) -> [u8; 20] {
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts.iter() {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// The lowercase hex signature WeChat sends for `token`, `timestamp` and `nonce`.
pub fn sign(token: &str, timestamp: &str, nonce: &str) -> String {
    hex::encode(digest(&mut [token, timestamp, nonce]))
}

/// Compares a received hex signature with the expected digest in constant time.
pub fn matches(expected: &[u8; 20], received_hex: &str) -> bool {
    let mut received = [0u8; 20];
    if hex::decode_to_slice(received_hex, &mut received).is_err() {
        return false;
    }
    expected.ct_eq(&received).into()
}

/// Checks `signature` for the plain-mode triple.
pub fn verify(
    token: &str,
    timestamp: &str,
    nonce: &str,
    signature: &str,
) -> Result<(), SignatureError> {
    if matches(&digest(&mut [token, timestamp, nonce]), signature) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Refuses a timestamp more than `tolerance` seconds from `now`; a tolerance of 0 accepts any.
pub fn check_fresh(timestamp: &str, now: u64, tolerance: u64) -> Result<(), SignatureError> {
    let ts: u64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if tolerance == 0 {
        return Ok(());
    }
    let skew = ts.abs_diff(now);
    if skew > tolerance {
        return Err(SignatureError::Stale(skew, tolerance));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared vector from wechatpy's test suite.
    #[test]
    fn shared_vector() {
        assert_eq!(
            sign("test", "1410685589", "test"),
            "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff"
        );
        assert!(
            verify(
                "test",
                "1410685589",
                "test",
                "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff"
            )
            .is_ok()
        );
        assert!(
            verify(
                "test",
                "1410685589",
                "test",
                "F21891DE399B4E33A1A93C9A7B8A8FFFB5A443FF"
            )
            .is_ok()
        );
    }

    #[test]
    fn forged_and_malformed_signatures_fail() {
        let ok = sign("tok", "1", "n");
        assert_eq!(verify("tok", "1", "m", &ok), Err(SignatureError::Mismatch));
        assert_eq!(
            verify("tok", "1", "n", &ok[..39]),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify("tok", "1", "n", "zz"), Err(SignatureError::Mismatch));
        assert_eq!(verify("tok", "1", "n", ""), Err(SignatureError::Mismatch));
    }

    #[test]
    fn freshness() {
        assert!(check_fresh("1000", 1200, 300).is_ok());
        assert_eq!(
            check_fresh("1000", 1400, 300),
            Err(SignatureError::Stale(400, 300))
        );
        assert_eq!(
            check_fresh("1400", 1000, 300),
            Err(SignatureError::Stale(400, 300))
        );
        // The edge: exactly the tolerance away is fresh, a second more is not.
        assert!(check_fresh("1000", 1300, 300).is_ok());
        assert!(check_fresh("1300", 1000, 300).is_ok());
        assert_eq!(
            check_fresh("1000", 1301, 300),
            Err(SignatureError::Stale(301, 300))
        );
        assert!(check_fresh("1", 999_999, 0).is_ok());
        assert_eq!(check_fresh("x", 1, 0), Err(SignatureError::BadTimestamp));
        assert_eq!(check_fresh("-5", 1, 300), Err(SignatureError::BadTimestamp));
    }
}
