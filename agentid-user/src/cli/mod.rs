//! Command implementations behind `agentid`'s subcommands.
pub mod trace;
