#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(t) = agentid_tests::fuzz::TARGETS.iter().find(|t| t.name == "config") {
        (t.run)(data);
    }
});
