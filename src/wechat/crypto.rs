//! Security mode: WeChat's AES-256-CBC message encryption (lenient EncodingAESKey, 32-byte PKCS#7, appid check) and `msg_signature`.

use aes::Aes256;
use base64::Engine;
use base64::alphabet::STANDARD as ALPHABET;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};

/// WeChat pads to multiples of 32 bytes, not AES's 16.
const PAD_BLOCK: usize = 32;

/// Decodes EncodingAESKey + "=" while accepting non-zero trailing bits, as real keys have.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &ALPHABET,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a key or a ciphertext was refused. The text is the reason in the 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("EncodingAESKey must be 43 characters of base64 (got {0} characters)")]
    KeyLength(usize),
    #[error("EncodingAESKey is not base64")]
    KeyNotBase64,
    #[error("Encrypt is not base64")]
    NotBase64,
    #[error("Encrypt is {0} bytes, not a positive multiple of the AES block size")]
    BlockSize(usize),
    #[error("decrypted message has invalid padding")]
    Padding,
    #[error("decrypted message is truncated")]
    Truncated,
    #[error("decrypted message is for another appid")]
    AppId,
}

/// One account's (or platform's) message cipher.
#[derive(Clone)]
pub struct Cipher {
    key: [u8; 32],
    app_id: String,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cipher {{ app_id: {:?}, key: [redacted] }}", self.app_id)
    }
}

impl Cipher {
    /// Builds the cipher from the console's 43-character EncodingAESKey and the appid the
    /// decrypted messages must name.
    pub fn new(encoding_aes_key: &str, app_id: &str) -> Result<Cipher, CryptoError> {
        if encoding_aes_key.len() != 43 {
            return Err(CryptoError::KeyLength(encoding_aes_key.chars().count()));
        }
        let bytes = LENIENT
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| CryptoError::KeyNotBase64)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::KeyNotBase64)?;
        Ok(Cipher {
            key,
            app_id: app_id.to_owned(),
        })
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.key[..16]);
        iv
    }

    /// Decrypts an `Encrypt` value and returns the XML inside, after checking the
    /// padding, the length field and the trailing appid.
    pub fn decrypt(&self, encrypt: &str) -> Result<Vec<u8>, CryptoError> {
        let mut buf = STANDARD
            .decode(encrypt.trim())
            .map_err(|_| CryptoError::NotBase64)?;
        if buf.is_empty() || buf.len() % 16 != 0 {
            return Err(CryptoError::BlockSize(buf.len()));
        }
        let plain = cbc::Decryptor::<Aes256>::new(&self.key.into(), &self.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::Padding)?;
        let pad = usize::from(*plain.last().ok_or(CryptoError::Padding)?);
        if !(1..=PAD_BLOCK).contains(&pad) || pad > plain.len() {
            return Err(CryptoError::Padding);
        }
        let (content, padding) = plain.split_at(plain.len() - pad);
        if padding.iter().any(|&b| usize::from(b) != pad) {
            return Err(CryptoError::Padding);
        }
        let len_bytes: [u8; 4] = content
            .get(16..20)
            .and_then(|s| s.try_into().ok())
            .ok_or(CryptoError::Truncated)?;
        let len =
            usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| CryptoError::Truncated)?;
        let end = 20usize.checked_add(len).ok_or(CryptoError::Truncated)?;
        let xml = content.get(20..end).ok_or(CryptoError::Truncated)?;
        let app_id = content.get(end..).ok_or(CryptoError::Truncated)?;
        if app_id != self.app_id.as_bytes() {
            return Err(CryptoError::AppId);
        }
        Ok(xml.to_vec())
    }

    /// Encrypts `xml` as WeChat does, with the given 16-byte random prefix.
    pub fn encrypt_with(&self, random: [u8; 16], xml: &[u8]) -> String {
        let mut plain = Vec::with_capacity(xml.len() + self.app_id.len() + 20 + PAD_BLOCK);
        plain.extend_from_slice(&random);
        plain.extend_from_slice(&u32::try_from(xml.len()).unwrap_or(u32::MAX).to_be_bytes());
        plain.extend_from_slice(xml);
        plain.extend_from_slice(self.app_id.as_bytes());
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        plain.extend(std::iter::repeat_n(u8::try_from(pad).unwrap_or(32), pad));
        let len = plain.len();
        let encrypted = cbc::Encryptor::<Aes256>::new(&self.key.into(), &self.iv().into())
            .encrypt_padded_mut::<NoPadding>(&mut plain, len)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        STANDARD.encode(encrypted)
    }

    /// Encrypts `xml` with a fresh random prefix from the operating system's CSPRNG.
    pub fn encrypt(&self, xml: &[u8]) -> String {
        self.encrypt_with(rand::random(), xml)
    }
}

/// `msg_signature`: the signature over token, timestamp, nonce and the `Encrypt` value.
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    hex::encode(super::signature::digest(&mut [
        token, timestamp, nonce, encrypt,
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tencent's own sample (WxJava's tests).
    #[test]
    fn tencent_vector() {
        let c = Cipher::new(
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            "wxb11529c136998cb6",
        )
        .expect("key");
        let expected = "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==";
        assert_eq!(
            c.encrypt_with(*b"aaaabbbbccccdddd", "我是中文abcd123".as_bytes()),
            expected
        );
        assert_eq!(
            c.decrypt(expected).expect("decrypts"),
            "我是中文abcd123".as_bytes()
        );
    }

    /// wechatpy's vector: pad value 1, signed with msg_signature.
    #[test]
    fn wechatpy_vector() {
        let encrypt = "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=";
        assert_eq!(
            msg_signature("123456", "1411525903", "461056294", encrypt),
            "74d92dfeb87ba7c714f89d98870ae5eb62dff26d"
        );
        let c = Cipher::new(
            "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
            "wx49f0ab532d5d035a",
        )
        .expect("key");
        let xml = String::from_utf8(c.decrypt(encrypt).expect("decrypts")).expect("utf-8");
        assert!(xml.contains("<Content><![CDATA[test]]></Content>"), "{xml}");
        let push = crate::wechat::push::Push::parse(xml.as_bytes()).expect("a push");
        assert_eq!(
            push.fields.get("Content").and_then(|v| v.as_str()),
            Some("test")
        );
    }

    #[test]
    fn every_tampering_is_a_specific_error() {
        let c = Cipher::new(
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            "wxb11529c136998cb6",
        )
        .expect("key");
        let other = Cipher::new(
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            "wx0000000000000000",
        )
        .expect("key");
        let good = c.encrypt(b"<xml/>");
        assert_eq!(other.decrypt(&good), Err(CryptoError::AppId));
        assert_eq!(c.decrypt("%%%"), Err(CryptoError::NotBase64));
        assert_eq!(c.decrypt(""), Err(CryptoError::BlockSize(0)));
        assert_eq!(
            c.decrypt(&STANDARD.encode([0u8; 17])),
            Err(CryptoError::BlockSize(17))
        );
        let raw = STANDARD.decode(&good).expect("b64");
        // One block: either its last byte is not a valid pad, or nothing is left for the length.
        assert!(matches!(
            c.decrypt(&STANDARD.encode(&raw[..16])),
            Err(CryptoError::Padding | CryptoError::Truncated)
        ));
        let mut flipped = raw.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        assert!(matches!(
            c.decrypt(&STANDARD.encode(&flipped)),
            Err(CryptoError::Padding | CryptoError::Truncated | CryptoError::AppId)
        ));
        let key_err = Cipher::new("short", "wx").expect_err("short key");
        assert_eq!(key_err, CryptoError::KeyLength(5));
        assert_eq!(
            Cipher::new(&"!".repeat(43), "wx").expect_err("bad"),
            CryptoError::KeyNotBase64
        );
        assert!(!format!("{c:?}").contains("abcdef"));
    }
}
