//! The phases of a run against the hosts, one module each (issue 21: moving out of
//! src/engine.rs).

pub mod outside;
pub mod preflight;
