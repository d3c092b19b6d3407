//! Who is on the other end of the socket: `SO_PEERCRED`, checked against root + group.
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

/// Peer credentials of one API connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => Self {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            // Unknown peer: nobody, refused below.
            Err(_) => Self {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
            },
        }
    }
}

impl Peer {
    /// Root, or a member of `group` (primary or supplementary, read from the peer's
    /// `/proc/PID/status` so the check sees the groups the process really has).
    pub fn allowed(&self, group: Option<u32>) -> bool {
        if self.uid == 0 {
            return true;
        }
        let Some(gid) = group else { return false };
        if self.gid == gid {
            return true;
        }
        let Some(pid) = self.pid else { return false };
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
        })
    }
}
