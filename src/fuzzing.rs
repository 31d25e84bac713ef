//! The fuzz harness's body: one input through the full request path. The cargo-fuzz target in `fuzz/` and the regression test over `fuzz/seeds/` both call it.

use crate::config::Mode;
use crate::secret::Secret;
use crate::wechat::crypto::{Cipher, msg_signature};
use crate::wechat::inbound::{SignedQuery, Verifier};
use crate::wechat::signature::sign;

const TOKEN: &str = "fuzztoken";
const TS: &str = "1700000000";
const NONCE: &str = "424242";

/// A query signed as WeChat does; `wecom` leaves out the plain `signature`, as WeCom does.
fn signed(encrypted: Option<&str>, wecom: bool) -> SignedQuery {
    SignedQuery {
        signature: (!wecom).then(|| sign(TOKEN, TS, NONCE)),
        timestamp: Some(TS.into()),
        nonce: Some(NONCE.into()),
        echostr: encrypted.map(str::to_owned),
        msg_signature: encrypted.map(|e| msg_signature(TOKEN, TS, NONCE, e)),
    }
}

/// Runs one fuzz input through the request path; panics only on a real defect.
pub fn request(data: &[u8]) {
    let [mode, path, rest @ ..] = data else {
        return;
    };
    let Ok(cipher) = Cipher::new(
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "wxb11529c136998cb6",
    ) else {
        return;
    };
    let verifier = Verifier {
        token: Secret::new(TOKEN),
        mode: match mode % 3 {
            0 => Mode::Plain,
            1 => Mode::Compatible,
            _ => Mode::Secure,
        },
        cipher: Some(cipher.clone()),
        tolerance: 0,
    };
    let now = 1_700_000_000;
    let wecom = path & 4 != 0;
    match path % 4 {
        // Anything as query and body: nothing may pass unsigned, nothing may panic.
        0 => {
            let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let (query, body) = rest.split_at(split);
            let q: SignedQuery = serde_urlencoded::from_bytes(query).unwrap_or_default();
            let verified = verifier.verify(&q, body, now);
            let (ts, nonce) = (
                q.timestamp.as_deref().unwrap_or(""),
                q.nonce.as_deref().unwrap_or(""),
            );
            // Accepted only with a right `signature`, or with a right `msg_signature` over
            // the body's `Encrypt` (WeCom sends nothing else).
            let msg_signed = || {
                let encrypt = crate::wechat::xml::parse(body)
                    .ok()
                    .and_then(|doc| doc.root().child_text("Encrypt").map(|e| e.into_owned()));
                encrypt.is_some_and(|e| {
                    q.msg_signature.as_deref() == Some(msg_signature(TOKEN, ts, nonce, &e).as_str())
                })
            };
            assert!(
                verified.is_err()
                    || q.signature.as_deref() == Some(sign(TOKEN, ts, nonce).as_str())
                    || msg_signed()
            );
            let _ = verifier.echo(&q, now);
        }
        // A correctly signed query with any body.
        1 => {
            let _ = verifier.verify(&signed(None, false), rest, now);
        }
        // Any plaintext, encrypted and signed as WeChat would.
        2 => {
            let encrypted = cipher.encrypt_with([7; 16], rest);
            let body = format!(
                "<xml><ToUserName>x</ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
            );
            let _ = verifier.verify(&signed(Some(&encrypted), wecom), body.as_bytes(), now);
        }
        // Any Encrypt value, with valid signatures over it.
        _ => {
            let encrypted = String::from_utf8_lossy(rest);
            let body = format!("<xml><Encrypt>{encrypted}</Encrypt></xml>");
            let q = signed(Some(&encrypted), wecom);
            let _ = verifier.verify(&q, body.as_bytes(), now);
            let _ = verifier.echo(&q, now);
        }
    }
}
