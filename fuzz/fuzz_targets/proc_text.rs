//! cargo-fuzz target `proc_text`: see `netmend::fuzz::proc_text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netmend::fuzz::proc_text(data));
