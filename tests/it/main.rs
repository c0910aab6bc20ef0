//! Integration tests: the real server on loopback, real HTTP.

mod bad_input;
mod cli;
mod exact;
mod exposition;
mod harness;
mod ingest;
mod loadgen;
mod sql_log;
