//! Fuzzes the full request path: query and body through signature checks, the account's mode, decryption and parsing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxhook::fuzzing::request(data));
