//! Who is calling, from the kernel: the peer's pid and uid from `SO_PEERCRED`, a pidfd
//! pinning that exact process (`SO_PEERPIDFD`, Linux 6.5+; else `pidfd_open` and a
//! start-time check), and, on every request, the daemon's process table for its agent and
//! session. Nothing the caller says is believed.
//!
//! A pidfd that reports the process gone means its pid may already belong to another
//! process: refused, whatever the table says about that pid now.
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::Arc,
};

use tokio::net::UnixStream;

use super::tokens::Subject;
use crate::state::LiveView;

/// The peer of one connection, as captured at accept.
#[derive(Debug)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    /// The process that connected (`None`: the kernel gave none; the peer is then refused).
    pidfd: Option<OwnedFd>,
    /// Its start time (`/proc/PID/stat`), read while the pidfd showed it alive.
    pub start_ticks: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the calling process (pid {0}) is gone: its pid may be another process's now")]
    Exited(u32),
    #[error("pid {0} is not a process of a registered agent")]
    Unregistered(u32),
    #[error("pid {pid} matches several agents ({agents}): no identity is issued")]
    Ambiguous { pid: u32, agents: String },
    #[error("the session {0} has ended")]
    SessionEnded(String),
    #[error("pid {0} is not the process that connected")]
    Reused(u32),
}

impl Peer {
    pub fn of(stream: &UnixStream) -> std::io::Result<Self> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
        let pidfd = if pid == 0 {
            None
        } else {
            peer_pidfd(stream).or_else(|| pidfd_open(pid))
        };
        let mut peer = Self {
            pid,
            uid: cred.uid(),
            pidfd,
            start_ticks: None,
        };
        // Read after the pidfd exists and checked alive after: the start time is the
        // pinned process's, not a successor's.
        let ticks = start_ticks(pid);
        if peer.alive() {
            peer.start_ticks = ticks;
        }
        Ok(peer)
    }

    /// The connected process still runs (its pid is still its own).
    pub fn alive(&self) -> bool {
        let Some(fd) = &self.pidfd else { return false };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&raw mut p, 1, 0) };
        n == 0
    }

    /// The caller's identity now, from the table: registered, not ambiguous, its session
    /// live, and the pid still the process that connected.
    pub fn attest(&self, view: &LiveView) -> Result<Subject, Refusal> {
        if !self.alive() {
            return Err(Refusal::Exited(self.pid));
        }
        let Some((proc, ident)) = view.processes.iter().find(|(p, _)| p.pid == self.pid) else {
            return Err(Refusal::Unregistered(self.pid));
        };
        if self.start_ticks != Some(proc.start_ticks) {
            return Err(Refusal::Reused(self.pid));
        }
        let Some(ident) = ident else {
            return Err(Refusal::Unregistered(self.pid));
        };
        if !ident.ambiguous.is_empty() {
            return Err(Refusal::Ambiguous {
                pid: self.pid,
                agents: ident.ambiguous.join(", "),
            });
        }
        let (Some(agent), Some(session)) = (&ident.agent, &ident.session) else {
            return Err(Refusal::Unregistered(self.pid));
        };
        if !session_live(view, ident) {
            return Err(Refusal::SessionEnded(session.clone()));
        }
        Ok(Subject {
            agent: agent.id.clone(),
            session: session.clone(),
            acting_for: ident.acting_for.clone(),
        })
    }
}

/// A session lives while its root process does.
pub fn session_live(view: &LiveView, ident: &Arc<crate::attribution::ProcIdentity>) -> bool {
    let Some(root) = &ident.session_root else {
        return false;
    };
    view.processes
        .iter()
        .any(|(p, _)| &p.exec_id == root && p.exited_ns.is_none())
}

fn peer_pidfd(stream: &UnixStream) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).ok()?;
    // SAFETY: `fd` and `len` are valid for writes; the kernel writes at most `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    // SAFETY: on success the kernel gave us a new pidfd that nothing else owns.
    (r == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Before 6.5: a pidfd opened after the fact; the start-time comparison with the table
/// catches a pid reused in between.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: a plain system call with no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = libc::c_int::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel gave us a new pidfd that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn start_ticks(pid: u32) -> Option<u64> {
    let pid = i32::try_from(pid).ok()?;
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.starttime)
}
