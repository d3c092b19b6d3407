//! Command implementations behind `agentid`'s subcommands.
pub mod audit;
pub mod trace;
