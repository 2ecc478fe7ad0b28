//! cargo-fuzz target `rtnl_link`: see `netmend::fuzz::rtnl_link`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netmend::fuzz::rtnl_link(data));
