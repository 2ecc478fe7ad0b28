//! cargo-fuzz target `bpf_responder`: see `netmend::fuzz::bpf_responder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netmend::fuzz::bpf_responder(data));
