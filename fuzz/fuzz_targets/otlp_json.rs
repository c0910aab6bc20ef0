//! OTLP/JSON bodies of both signals (with the string-`asDouble` rewrite). Never a panic.
#![no_main]

use gatemeter::otlp::decode::{Encoding, message};
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = message::<ExportLogsServiceRequest>(data, Encoding::Json) {
        let _ = gatemeter::otlp::scan::view(&req);
    }
    let _ = message::<ExportMetricsServiceRequest>(data, Encoding::Json);
});
