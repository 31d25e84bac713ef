//! The WeChat push protocol: signatures, the XML body, and typed pushes.

pub mod authorization;
pub mod crypto;
pub mod inbound;
pub mod push;
pub mod signature;
pub mod xml;

/// True for a WeCom (企业微信) corp id: `ww` followed by 16 hexadecimal digits. Older
/// corps have `wx…` ids, which [`is_app_id`] accepts.
pub fn is_corp_id(s: &str) -> bool {
    s.len() == 18 && s.starts_with("ww") && s.bytes().skip(2).all(|b| b.is_ascii_hexdigit())
}

/// True for a WeChat appid: `wx` followed by 16 ASCII letters or digits.
pub fn is_app_id(s: &str) -> bool {
    s.len() == 18 && s.starts_with("wx") && s.bytes().skip(2).all(|b| b.is_ascii_alphanumeric())
}
