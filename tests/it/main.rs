//! Integration tests: the real server on loopback, real HTTP.

mod bad_input;
mod exact;
mod exposition;
mod harness;
mod ingest;
