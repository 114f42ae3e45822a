//! Arbitrary bytes as gRPC request bodies: decoded as each request, then
//! converted and checked as the server does before the engine sees them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| arbiter::fuzz::request_bytes(data));
