//! Command implementations behind `agentid`'s subcommands.
pub mod audit;
pub mod client;
pub mod query;
pub mod rules;
pub mod trace;
