//! cargo-fuzz target `nft_dump`: see `netmend::fuzz::nft_dump`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netmend::fuzz::nft_dump(data));
