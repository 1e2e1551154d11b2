#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gpuspan_fuzz::control_message(data));
