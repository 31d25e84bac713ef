//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` for every configured `whsec_` secret.

use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signs deliveries with one or more keys (several during a secret rotation).
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys, redacted)", self.keys.len())
    }
}

impl Signer {
    /// Decodes `whsec_<base64>` secrets; the error names the position of a bad one.
    pub fn new(secrets: &[Secret]) -> Result<Signer, String> {
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let b64 = s
                    .expose()
                    .strip_prefix("whsec_")
                    .ok_or_else(|| format!("secret #{} does not start with `whsec_`", i + 1))?;
                let key = STANDARD.decode(b64).map_err(|e| {
                    format!(
                        "secret #{}: the part after `whsec_` is not base64 ({e})",
                        i + 1
                    )
                })?;
                if !(24..=64).contains(&key.len()) {
                    return Err(format!(
                        "secret #{} decodes to {} bytes; Standard Webhooks secrets are 24 to 64",
                        i + 1,
                        key.len()
                    ));
                }
                Ok(key)
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Signer { keys })
    }

    /// The `webhook-signature` header value.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let mut out = String::new();
        for key in &self.keys {
            // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                continue;
            };
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(ts.as_bytes());
            mac.update(b".");
            mac.update(body);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            out.push_str(&STANDARD.encode(mac.finalize().into_bytes()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification's reference libraries.
    #[test]
    fn reference_vector() {
        let signer =
            Signer::new(&[Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]).expect("valid");
        let sig = signer.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_key_and_bad_secrets_are_named() {
        let a = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let b = "whsec_dGhpcyBpcyBhIHNlY29uZCBzZWNyZXQga2V5IQ==";
        let both = Signer::new(&[Secret::new(a), Secret::new(b)]).expect("valid");
        let sig = both.sign("x", 1, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
        let err = Signer::new(&[Secret::new(a), Secret::new("nope")]).expect_err("invalid");
        assert!(err.contains("secret #2"), "{err}");
        let err = Signer::new(&[Secret::new("whsec_!!!")]).expect_err("invalid");
        assert!(err.contains("not base64"), "{err}");
    }
}
