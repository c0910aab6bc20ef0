//! The usage CSV encoder: any row (text cells arbitrary, numbers within what the log can hold)
//! is written as one CSV record that reads back to the same cells, formulas neutralised.
#![no_main]

use arbitrary::Arbitrary;
use gatemeter::export::usage_csv::{restore, write_row, writer};
use gatemeter::store::sql::UsageRow;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Row {
    timestamp_ms: i64,
    user: Option<String>,
    key: Option<String>,
    provider: String,
    model: String,
    original_model: Option<String>,
    endpoint: String,
    status: i64,
    tokens: [u32; 5],
    cost_micros: i64,
    duration_ms: i64,
    session_id: Option<String>,
    retry_count: i64,
}

fuzz_target!(|r: Row| {
    // The log holds tokens within the record's bounds (≤ 1e8 each).
    let tokens = r.tokens.map(|t| i64::from(t % 100_000_001));
    let row = UsageRow {
        timestamp_ms: r.timestamp_ms,
        user: r.user.as_deref(),
        key: r.key.as_deref(),
        provider: &r.provider,
        model: &r.model,
        original_model: r.original_model.as_deref(),
        endpoint: &r.endpoint,
        status: r.status,
        tokens,
        cost_micros: r.cost_micros,
        duration_ms: r.duration_ms,
        session_id: r.session_id.as_deref(),
        retry_count: r.retry_count,
    };
    let mut w = writer(Vec::new());
    write_row(&mut w, &row).expect("written");
    let bytes = w.into_inner().expect("flushed");
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(&bytes[..]);
    let rec = rd.records().next().expect("one record").expect("valid CSV");
    let text = |i: usize| restore(&rec[i]).to_string();
    assert_eq!(text(1), r.user.unwrap_or_default());
    assert_eq!(text(3), r.provider);
    assert_eq!(text(4), r.model);
    assert_eq!(text(6), r.endpoint);
    for i in [1, 2, 3, 4, 5, 6, 16] {
        let first = rec[i].as_bytes().first();
        assert!(
            !matches!(first, Some(b'=' | b'+' | b'-' | b'@')),
            "formula left in cell {i}"
        );
    }
});
