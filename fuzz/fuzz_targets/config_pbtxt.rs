#![no_main]
// cargo fuzz run config_pbtxt (nightly); the function is flotilla_fuzz's, run over its seeds in CI.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(t) = flotilla_fuzz::target("config_pbtxt") {
        (t.run)(data)
    }
});
