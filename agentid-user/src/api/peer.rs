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

/// gid of a group name, if the group exists.
pub fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: valid pointers for the call; buf outlives grp's use.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &raw mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &raw mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}
