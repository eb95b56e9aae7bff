//! Any text: decoding must not panic, and whatever decodes must re-encode to
//! a string that decodes to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tarmo_tcf::gpp;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tc) = tarmo_tcf::decode(text) {
        assert_eq!(tarmo_tcf::decode(&tarmo_tcf::encode(&tc)), Ok(tc));
    }
    if let Ok(value) = gpp::decode(text) {
        assert_eq!(gpp::decode(&gpp::encode(&value)), Ok(value));
    }
});
