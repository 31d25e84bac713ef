//! The replay tool: signs push XML exactly as WeChat would (fresh timestamp and nonce) and POSTs it to a deployment.

use crate::wechat::crypto::{self, Cipher};
use crate::wechat::signature;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the deployment answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// True for WeChat's idea of an acknowledged push: 200 with `success` (or an empty body).
    pub fn acknowledged(&self) -> bool {
        self.status == 200 && matches!(self.body.trim(), "success" | "")
    }
}

/// `url` with WeChat's signed query (`signature`, `timestamp`, `nonce`) appended.
pub fn signed_url(url: &str, token: &str, timestamp: u64, nonce: &str) -> String {
    let ts = timestamp.to_string();
    let sig = signature::sign(token, &ts, nonce);
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}signature={sig}&timestamp={ts}&nonce={nonce}")
}

/// A push in security mode: the body WeChat sends and the `msg_signature` over it.
pub fn encrypted_request(
    cipher: &Cipher,
    token: &str,
    timestamp: u64,
    nonce: &str,
    xml: &[u8],
) -> (String, Vec<u8>) {
    let encrypted = cipher.encrypt(xml);
    let msg_signature = crypto::msg_signature(token, &timestamp.to_string(), nonce, &encrypted);
    let query = format!("&encrypt_type=aes&msg_signature={msg_signature}");
    let body = format!(
        "<xml><ToUserName><![CDATA[toUser]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    );
    (query, body.into_bytes())
}

/// Signs `body` with a fresh timestamp and nonce and POSTs it to `url`.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Vec<u8>,
) -> Result<Answer, reqwest::Error> {
    send_as(client, url, token, None, body).await
}

/// Like [`send`]; with a cipher, encrypts the push as WeChat's security mode does.
pub async fn send_as(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    cipher: Option<&Cipher>,
    body: Vec<u8>,
) -> Result<Answer, reqwest::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let nonce = rand::random::<u32>().to_string();
    let mut url = signed_url(url, token, now, &nonce);
    let body = match cipher {
        Some(cipher) => {
            let (query, body) = encrypted_request(cipher, token, now, &nonce, &body);
            url.push_str(&query);
            body
        }
        None => body,
    };
    let response = client
        .post(url)
        .header("content-type", "text/xml")
        .body(body)
        .send()
        .await?;
    Ok(Answer {
        status: response.status().as_u16(),
        body: response.text().await?,
    })
}
