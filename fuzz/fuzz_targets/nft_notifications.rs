//! cargo-fuzz target `nft_notifications`: notifications applied to a cache started from the dump
//! before one captured step (the first input byte chooses it); see
//! `netmend::fuzz::NotificationSteps`.
#![no_main]

use netmend::fuzz::NotificationSteps;
use std::path::Path;
use std::sync::OnceLock;

static STEPS: OnceLock<NotificationSteps> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    STEPS
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/testdata/nft/events");
            NotificationSteps::load(&dir).expect("the captured notification steps")
        })
        .run(data)
});
