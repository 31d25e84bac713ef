//! Values that never show themselves in logs, `Debug` output or printed configuration: secrets, and URLs' credentials.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A secret value (a WeChat token, later keys). `Debug`, `Display` and `Serialize`
/// all print `[redacted]`; only [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it (signature checks).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A URL that may carry credentials (`https://user:password@host/`): `Debug` and
/// `Serialize` print it with the user information replaced by `[redacted]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        SecretUrl(value.into())
    }

    /// The URL itself, for the client that sends to it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its user information.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => format!("{scheme}://[redacted]@{}", &rest[at + 1..]),
            None => self.0.clone(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_never_prints_its_credentials() {
        let url = SecretUrl::new("https://relay:hunter2@example.com:8443/hook?x=a@b");
        assert_eq!(
            format!("{url:?}"),
            "https://[redacted]@example.com:8443/hook?x=a@b"
        );
        assert_eq!(
            serde_json::to_string(&url).ok().as_deref(),
            Some("\"https://[redacted]@example.com:8443/hook?x=a@b\"")
        );
        assert_eq!(
            url.expose(),
            "https://relay:hunter2@example.com:8443/hook?x=a@b"
        );
        let plain = SecretUrl::new("http://127.0.0.1:9/a@b");
        assert_eq!(format!("{plain:?}"), "http://127.0.0.1:9/a@b");
    }

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(
            serde_json::to_string(&s).ok().as_deref(),
            Some("\"[redacted]\"")
        );
        assert_eq!(s.expose(), "hunter2");
    }
}
