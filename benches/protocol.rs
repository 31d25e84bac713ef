//! Microbenchmarks of the per-push CPU work: parsing, the event JSON, the signature and security-mode decryption.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::UNIX_EPOCH;
use wxhook::envelope::Envelope;
use wxhook::wechat::crypto::Cipher;
use wxhook::wechat::push::Push;
use wxhook::wechat::signature;

// The allocator the `wxhook` binary runs with, so the figures are the service's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/fixtures/pushes/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn protocol(c: &mut Criterion) {
    let success = fixture("publish_success.xml");
    let failed = fixture("publish_original_failed.xml");
    let mut group = c.benchmark_group("push");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse PUBLISHJOBFINISH success", |b| {
        b.iter(|| Push::parse(black_box(&success)))
    });
    group.bench_function("parse PUBLISHJOBFINISH failure", |b| {
        b.iter(|| Push::parse(black_box(&failed)))
    });
    group.bench_function("parse + event JSON", |b| {
        b.iter(|| {
            let push = Push::parse(black_box(&success)).expect("parses");
            Envelope::new("bench", None, push, UNIX_EPOCH).to_json()
        })
    });
    group.bench_function("verify signature", |b| {
        let sig = signature::sign("benchtoken", "1732170000", "123456789");
        b.iter(|| signature::verify("benchtoken", "1732170000", black_box("123456789"), &sig))
    });
    let cipher = Cipher::new(
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "wxb11529c136998cb6",
    )
    .expect("key");
    let encrypted = cipher.encrypt(&success);
    group.bench_function("decrypt security-mode push", |b| {
        b.iter(|| cipher.decrypt(black_box(&encrypted)))
    });
    group.finish();
}

criterion_group!(benches, protocol);
criterion_main!(benches);
