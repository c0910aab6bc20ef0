//! OTLP/HTTP protobuf bodies: the borrowed logs scanner (the fast path) against prost, and
//! prost's decoding of every signal. Whatever the scanner accepts, prost accepts too, with the
//! same view.
#![no_main]

use gatemeter::otlp::decode::{Encoding, message};
use gatemeter::otlp::scan;
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Some(fast) = scan::logs(data) {
        let req =
            ExportLogsServiceRequest::decode(data).expect("prost reads what the scanner read");
        assert_eq!(fast, scan::view(&req));
    }
    let _ = message::<ExportMetricsServiceRequest>(data, Encoding::Protobuf);
});
