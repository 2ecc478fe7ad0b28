//! cargo-fuzz target `rtnl_address`: see `netmend::fuzz::rtnl_address`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netmend::fuzz::rtnl_address(data));
