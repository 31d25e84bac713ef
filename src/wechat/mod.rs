//! The WeChat push protocol: signatures, the XML body, and typed pushes.

pub mod push;
pub mod signature;
pub mod xml;
