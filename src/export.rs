//! Outputs: renderings of the fleet view for other systems.

pub mod prometheus;
