//! The config loader: any YAML text is a `Config` or a `ConfigError`, never a panic.
#![no_main]

use std::path::Path;

use gatemeter::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Config::from_yaml_str(yaml, Path::new("fuzz.yaml"), &|_| None);
});
