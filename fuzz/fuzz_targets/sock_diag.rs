//! cargo-fuzz target `sock_diag`: see `netmend::fuzz::sock_diag`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netmend::fuzz::sock_diag(data));
