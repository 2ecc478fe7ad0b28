//! cargo-fuzz target `arp_frame`: see `netmend::fuzz::arp_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netmend::fuzz::arp_frame(data));
