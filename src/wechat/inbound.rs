//! One request's verification, without I/O: signature and freshness, the account's mode, `msg_signature` and decryption, and the push inside.

use super::crypto::{Cipher, CryptoError};
use super::push::{Push, PushError};
use super::signature::{self, SignatureError};
use super::xml;
use crate::config::Mode;
use crate::secret::Secret;
use serde::Deserialize;

/// The query parameters WeChat signs requests with.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SignedQuery {
    pub signature: Option<String>,
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub echostr: Option<String>,
    pub msg_signature: Option<String>,
}

impl SignedQuery {
    /// `timestamp` and `nonce`, which every signature covers.
    fn timestamp_and_nonce(&self) -> Result<(&str, &str), SignatureError> {
        Ok((
            required(&self.timestamp, "timestamp")?,
            required(&self.nonce, "nonce")?,
        ))
    }
}

/// A query parameter the request cannot do without.
fn required<'q>(value: &'q Option<String>, name: &'static str) -> Result<&'q str, SignatureError> {
    value.as_deref().ok_or(SignatureError::Missing(name))
}

/// Why a request is refused, before it reaches the spool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A missing, wrong or stale signature: 401.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Authenticated data that does not belong here (mode, appid, replay): 401.
    #[error("{0}")]
    Rejected(String),
    /// A body that is not a push: 400.
    #[error("{0}")]
    Malformed(String),
}

impl From<PushError> for Refusal {
    fn from(e: PushError) -> Self {
        Refusal::Malformed(e.to_string())
    }
}

impl From<CryptoError> for Refusal {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::AppId => Refusal::Rejected(e.to_string()),
            other => Refusal::Malformed(format!("cannot decrypt: {other}")),
        }
    }
}

/// What an account checks requests with.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub token: Secret,
    pub mode: Mode,
    pub cipher: Option<Cipher>,
    /// Largest accepted clock distance in seconds; 0 accepts any.
    pub tolerance: u64,
}

impl Verifier {
    /// Checks `signature` over token, timestamp and nonce, and the timestamp's freshness;
    /// returns the signature and timestamp.
    ///
    /// An encrypted account's request may carry `msg_signature` alone, as WeCom sends
    /// them: then nothing is checked here (`None`), and [`Verifier::open`] accepts only
    /// what `msg_signature` covers, the `Encrypt` value it decrypts.
    pub fn check_signature<'q>(
        &self,
        q: &'q SignedQuery,
        now: u64,
    ) -> Result<Option<(&'q str, &'q str)>, Refusal> {
        if q.signature.is_none() && self.mode != Mode::Plain {
            required(&q.msg_signature, "msg_signature")?;
            return Ok(None);
        }
        let sig = required(&q.signature, "signature")?;
        let (ts, nonce) = q.timestamp_and_nonce()?;
        signature::verify(self.token.expose(), ts, nonce, sig)?;
        signature::check_fresh(ts, now, self.tolerance)?;
        Ok(Some((sig, ts)))
    }

    /// Checks `msg_signature` over token, timestamp, nonce and an encrypted value, then decrypts it.
    pub fn decrypt(&self, q: &SignedQuery, encrypted: &str, now: u64) -> Result<Vec<u8>, Refusal> {
        let cipher = self
            .cipher
            .as_ref()
            .ok_or_else(|| Refusal::Rejected("this account has no encoding_aes_key".into()))?;
        let msg_sig = required(&q.msg_signature, "msg_signature")?;
        let (ts, nonce) = q.timestamp_and_nonce()?;
        let expected = signature::digest(&mut [self.token.expose(), ts, nonce, encrypted]);
        if !signature::matches(&expected, msg_sig) {
            return Err(SignatureError::MsgMismatch.into());
        }
        signature::check_fresh(ts, now, self.tolerance)?;
        Ok(cipher.decrypt(encrypted)?)
    }

    /// The answer to a URL verification: the echostr, decrypted when it comes encrypted.
    pub fn echo(&self, q: &SignedQuery, now: u64) -> Result<String, Refusal> {
        let echostr = required(&q.echostr, "echostr")?;
        if q.msg_signature.is_some() && self.cipher.is_some() {
            let plain = self.decrypt(q, echostr, now)?;
            return String::from_utf8(plain)
                .map_err(|_| Refusal::Malformed("decrypted echostr is not UTF-8".into()));
        }
        match self.check_signature(q, now)? {
            Some(_) => Ok(echostr.to_owned()),
            None => Err(SignatureError::Missing("signature").into()),
        }
    }

    /// The push inside a body after [`Verifier::check_signature`], read as the account's
    /// mode says. A plaintext body needs the plain `signature`.
    pub fn open(&self, q: &SignedQuery, body: &[u8], now: u64) -> Result<Push, Refusal> {
        if self.mode == Mode::Plain {
            return Ok(Push::parse(body)?);
        }
        let outer = xml::parse(body).map_err(PushError::from)?;
        match outer.root().child_text("Encrypt") {
            Some(encrypted) => Ok(Push::parse(&self.decrypt(q, &encrypted, now)?)?),
            None if self.mode == Mode::Compatible => {
                required(&q.signature, "signature")?;
                Ok(Push::from_element(outer.root())?)
            }
            None => Err(Refusal::Rejected(
                "this account is in secure mode: a body without <Encrypt> is refused".into(),
            )),
        }
    }

    /// The decrypted body of an always-encrypted message (a third-party platform's
    /// authorization event: `<xml><AppId/><Encrypt/></xml>`), after
    /// [`Verifier::check_signature`].
    pub fn open_encrypted(
        &self,
        q: &SignedQuery,
        body: &[u8],
        now: u64,
    ) -> Result<Vec<u8>, Refusal> {
        let outer = xml::parse(body).map_err(PushError::from)?;
        let encrypted = outer
            .root()
            .child_text("Encrypt")
            .ok_or(Refusal::Malformed(
                "missing element <Encrypt>: authorization events are always encrypted".into(),
            ))?;
        self.decrypt(q, &encrypted, now)
    }

    /// The whole check of a push: signature, freshness, then [`Verifier::open`].
    pub fn verify(&self, q: &SignedQuery, body: &[u8], now: u64) -> Result<Push, Refusal> {
        self.check_signature(q, now)?;
        self.open(q, body, now)
    }
}
