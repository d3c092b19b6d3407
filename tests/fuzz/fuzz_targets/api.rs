#![no_main]
libfuzzer_sys::fuzz_target!(
    init: agentid_fuzz_libfuzzer::init("api"),
    |data: &[u8]| agentid_fuzz_libfuzzer::run("api", data)
);
