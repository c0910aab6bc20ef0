//! Native ingest bodies: one object and arrays, through `parse_event` / `parse_array` (fast path
//! first, serde otherwise). Never a panic; an accepted record is within the record's bounds.
#![no_main]

use gatemeter::price::PriceTable;
use gatemeter::record::{Event, Validation, parse_array, parse_event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let prices = PriceTable::default();
    let v = Validation {
        now_ms: 1_795_460_000_000,
        prices: &prices,
        keep_requests: None,
    };
    if let Ok(Event::Finish(r)) = parse_event(json, &v) {
        assert!(
            r.cost_micros <= 100_000 * 1_000_000,
            "cost over the bound: {json}"
        );
    }
    let _ = parse_array(json, &v);
});
