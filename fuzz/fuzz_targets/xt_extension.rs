//! cargo-fuzz target `xt_extension`: see `netmend::fuzz::xt_extension`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netmend::fuzz::xt_extension(data));
