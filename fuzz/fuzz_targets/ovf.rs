//! Arbitrary text as an OVA's OVF descriptor: parsed or refused, never a panic.
#![no_main]

use hospes_image::ova;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ova::parse_ovf(text);
    }
});
