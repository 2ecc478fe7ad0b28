//! cargo-fuzz target `xt_table`: see `netmend::fuzz::xt_table`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netmend::fuzz::xt_table(data));
