//! Arbitrary bytes where the log's stored bytes go: every record decoder, the
//! format-1 reader, key parsing and the fold. None may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| arbiter::fuzz::stored_bytes(data));
