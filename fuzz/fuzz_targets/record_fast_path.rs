//! Differential: wherever the record scanner (the fast path) reads an object, serde must read
//! it to the very same raw record.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((fast, serde)) = gatemeter::record::fast_and_serde(json) {
        assert_eq!(
            Some(fast),
            serde,
            "fast path disagrees with serde on {json:?}"
        );
    }
});
