//! The facts selectors match on, gathered for one process.
use std::{collections::HashMap, io::Read};

use sha2::{Digest, Sha256};

use crate::{
    identity::{Registry, Workload, parse_cgroup_path},
    process::Process,
};

/// Caches for facts that cost a syscall or a file read: user names by uid and executable
/// hashes by `/proc/PID/exe` inode.
#[derive(Debug, Default)]
pub struct WorkloadFacts {
    users: HashMap<u32, Option<String>>,
    hashes: HashMap<(u64, u64, i64), String>,
}

/// Executables larger than this are not hashed (a selector on them never matches).
const MAX_HASH_BYTES: u64 = 256 << 20;

impl WorkloadFacts {
    /// Builds the [`Workload`] of `p` and runs `f` on it.
    pub fn with_workload<T>(
        &mut self,
        p: &Process,
        registry: &Registry,
        f: impl FnOnce(&Workload<'_>) -> T,
    ) -> T {
        let container = parse_cgroup_path(&p.cgroup);
        let user = self.user(p.uid);
        let sha = if registry.needs_exe_sha256() {
            self.exe_sha256(p.pid)
        } else {
            None
        };
        let w = Workload {
            cgroup_path: &p.cgroup,
            uid: p.uid,
            gid: p.gid,
            user: user.as_deref(),
            exe: (!p.exe.is_empty()).then_some(p.exe.as_str()),
            exe_sha256: sha.as_deref(),
            container: &container,
        };
        f(&w)
    }

    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| user_name(uid))
            .clone()
    }

    /// sha256 of the running image, read through `/proc/PID/exe` (the inode the process
    /// runs, not whatever the path names now), cached by device, inode and mtime.
    fn exe_sha256(&mut self, pid: u32) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let path = format!("/proc/{pid}/exe");
        let meta = std::fs::metadata(&path).ok()?;
        let key = (meta.dev(), meta.ino(), meta.mtime());
        if let Some(h) = self.hashes.get(&key) {
            return Some(h.clone());
        }
        if meta.len() > MAX_HASH_BYTES {
            return None;
        }
        let mut file = std::fs::File::open(&path).ok()?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let hex = hex::encode(hasher.finalize());
        self.hashes.insert(key, hex.clone());
        Some(hex)
    }
}

/// The user name of a uid from the system's user database.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives the use of pwd's strings.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &raw mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &raw mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points into buf, NUL-terminated.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}
