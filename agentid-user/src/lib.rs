//! agentid: which AI agent did what, with whose credential, acting for whom.
//!
//! Data flows one way: [`sensor`] (kernel programs → typed [`event::Event`]s) → process
//! table → identity → credentials → detect → outputs. Everything after the sensor is
//! plain Rust driven by events, testable without a kernel.
pub mod cgroup;
pub mod cli;
pub mod credentials;
pub mod event;
pub mod sensor;
