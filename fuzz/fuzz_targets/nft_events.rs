//! cargo-fuzz target `nft_events`: see `netmend::fuzz::nft_events`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netmend::fuzz::nft_events(data));
