//! Command implementations behind `agentid`'s subcommands.
pub mod audit;
pub mod client;
pub mod fleet;
pub mod query;
pub mod rules;
pub mod token;
pub mod trace;

use std::io;

/// Whether a command failed only because its reader went away (`agentid events | head`):
/// a write of ours got `EPIPE`. Such a command has nothing left to do and ends quietly with
/// status 0, as `ps`, `git log` and `journalctl` do.
///
/// Only an error raised by the write itself counts (a bare [`io::Error`], or a
/// [`serde_json::Error`] around one, possibly under `.context`): a broken pipe *inside*
/// another error, such as the daemon's socket closing under a request, stays an error.
pub fn is_closed_output(e: &anyhow::Error) -> bool {
    let io_kind = e
        .downcast_ref::<io::Error>()
        .map(io::Error::kind)
        .or_else(|| {
            e.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
        });
    io_kind == Some(io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_write_of_ours_to_a_closed_pipe_is_quiet() {
        #[derive(Debug, thiserror::Error)]
        #[error("talking to the daemon")]
        struct Upstream(#[source] io::Error);
        let epipe = || io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(is_closed_output(&anyhow::Error::new(epipe())));
        assert!(is_closed_output(
            &anyhow::Error::new(epipe()).context("writing a row")
        ));
        assert!(is_closed_output(&anyhow::Error::new(
            serde_json::Error::io(epipe())
        )));
        assert!(!is_closed_output(&anyhow::Error::new(io::Error::from(
            io::ErrorKind::PermissionDenied
        ))));
        assert!(!is_closed_output(&anyhow::anyhow!(
            "Broken pipe (os error 32)"
        )));
        // A broken pipe as the *source* of something else (the daemon's socket): an error.
        assert!(!is_closed_output(&anyhow::Error::new(Upstream(epipe()))));
    }
}
