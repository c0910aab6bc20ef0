//! OTLP/HTTP protobuf bodies: the borrowed logs and traces scanners (the fast paths) against
//! prost, and prost's decoding of every signal. Whatever a scanner accepts, prost accepts too,
//! with the same view.
#![no_main]

use gatemeter::otlp::decode::{Encoding, message};
use gatemeter::otlp::scan;
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Some(fast) = scan::logs(data) {
        let req =
            ExportLogsServiceRequest::decode(data).expect("prost reads what the scanner read");
        assert_eq!(fast, scan::view(&req));
    }
    if let Some(fast) = scan::spans(data) {
        let req =
            ExportTraceServiceRequest::decode(data).expect("prost reads what the scanner read");
        let slow = scan::spans_view(&req);
        // A double may be a NaN, unequal to itself: compare unequal views as text.
        if fast != slow {
            assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
        }
    }
    let _ = message::<ExportMetricsServiceRequest>(data, Encoding::Protobuf);
});
