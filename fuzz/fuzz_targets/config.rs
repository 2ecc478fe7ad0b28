//! cargo-fuzz target `config`: see `netmend::fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netmend::fuzz::config(data));
