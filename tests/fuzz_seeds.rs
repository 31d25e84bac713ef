//! Every input in fuzz/seeds (fixtures, and every crash the fuzzer ever found) goes through the request path without a panic.

#[test]
fn every_fuzz_seed_passes_the_request_path() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/request");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/request exists") {
        let path = entry.expect("entry").path();
        wxhook::fuzzing::request(&std::fs::read(&path).expect("seed"));
        count += 1;
    }
    assert!(count >= 32, "seeds are missing: {count}");
}
