//! The facts selectors match on, gathered for one process.
use std::{collections::HashMap, io::Read};

use sha2::{Digest, Sha256};

use crate::{
    identity::{Match, Registry, Workload, parse_cgroup_path},
    process::Process,
};

/// Caches for facts that cost a syscall or a file read: user names by uid and executable
/// hashes by `/proc/PID/exe` inode; and the registry's verdict per distinct workload.
#[derive(Debug, Default)]
pub struct WorkloadFacts {
    users: HashMap<u32, Option<String>>,
    hashes: HashMap<(u64, u64, i64), String>,
    matches: MatchMemo,
}

/// The registry's verdict for workloads already matched: every fork and exec asks again,
/// and the answer depends only on the cgroup, uid, gid and executable (unless a selector
/// hashes executables, which bypasses the memo). Parsing the cgroup path and running every
/// selector was a sixth of the pipeline's time.
///
/// Valid for one registry: the memo remembers which one (by address) and is emptied when
/// another is passed; the pipeline also starts a fresh attributor on every registry swap,
/// so an old address can never be mistaken for a new registry.
#[derive(Debug, Default)]
struct MatchMemo {
    registry: usize,
    /// By (cgroup id, uid, gid); a short list per key, told apart by executable and path
    /// (a cgroup id can be reused by a new cgroup with another path).
    by_key: rustc_hash::FxHashMap<(u64, u32, u32), Vec<Remembered>>,
    len: usize,
}

/// (executable, cgroup path, verdict).
type Remembered = (String, String, Match);

/// Workloads remembered before the memo is emptied (bounded against hostile churn).
const MATCH_MEMO_MAX: usize = 8192;
/// Executables remembered per (cgroup, uid, gid).
const MATCH_MEMO_PER_KEY: usize = 16;

impl MatchMemo {
    fn get(&mut self, registry: &Registry, p: &Process) -> Option<Match> {
        let addr = std::ptr::from_ref(registry) as usize;
        if self.registry != addr {
            self.registry = addr;
            self.by_key.clear();
            self.len = 0;
            return None;
        }
        self.by_key
            .get(&(p.cgroup_id, p.uid, p.gid))?
            .iter()
            .find(|(exe, cgroup, _)| *exe == p.exe && *cgroup == p.cgroup)
            .map(|(_, _, m)| m.clone())
    }

    fn put(&mut self, p: &Process, m: Match) {
        if self.len >= MATCH_MEMO_MAX {
            self.by_key.clear();
            self.len = 0;
        }
        let list = self.by_key.entry((p.cgroup_id, p.uid, p.gid)).or_default();
        if list.len() >= MATCH_MEMO_PER_KEY {
            list.remove(0);
            self.len -= 1;
        }
        list.push((p.exe.clone(), p.cgroup.clone(), m));
        self.len += 1;
    }
}

/// Executables larger than this are not hashed (a selector on them never matches).
const MAX_HASH_BYTES: u64 = 256 << 20;

impl WorkloadFacts {
    /// The registry's verdict for `p`'s workload, remembered per distinct workload.
    pub fn match_in(&mut self, p: &Process, registry: &Registry) -> Match {
        if registry.needs_exe_sha256() {
            return self.with_workload(p, registry, |w| registry.match_workload(w));
        }
        if let Some(m) = self.matches.get(registry, p) {
            return m;
        }
        let m = self.with_workload(p, registry, |w| registry.match_workload(w));
        self.matches.put(p, m.clone());
        m
    }

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
            .or_insert_with(|| crate::sys::user_name(uid))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::HostIds;

    fn registry(cgroup: &str) -> Registry {
        let r = Registry::parse_str(
            &format!(
                "[[agent]]\nid = \"spiffe://t.example/agent/a\"\n[[agent.selectors]]\n\
                 cgroup = \"{cgroup}\"\n"
            ),
            "t.toml",
        );
        assert!(r.errors().is_empty(), "{:?}", r.errors());
        r
    }

    fn process(cgroup: &str, exe: &str) -> Process {
        Process {
            pid: 4_900_001,
            exec_id: HostIds {
                host: "h".into(),
                boot: "b".into(),
            }
            .exec_id(1, 4_900_001),
            ppid: 1,
            parent_exec_id: None,
            start_ticks: 1,
            exe: exe.into(),
            argv: vec![],
            comm: "x".into(),
            uid: 4_900_000,
            gid: 4_900_000,
            loginuid: None,
            cgroup_id: 77,
            cgroup: cgroup.into(),
            exited_ns: None,
            moved_from: None,
        }
    }

    fn agent_of(m: &Match) -> Option<&str> {
        match m {
            Match::Agent(a) => Some(a.id.as_str()),
            _ => None,
        }
    }

    #[test]
    fn memo_follows_the_registry_the_path_and_the_executable() {
        let mut facts = WorkloadFacts::default();
        let one = registry("/agents/a");
        let p = process("/agents/a", "/usr/bin/curl");
        assert_eq!(
            agent_of(&facts.match_in(&p, &one)),
            Some("spiffe://t.example/agent/a")
        );
        assert_eq!(
            agent_of(&facts.match_in(&p, &one)),
            Some("spiffe://t.example/agent/a")
        );
        assert_eq!(facts.matches.len, 1);
        // Same cgroup id, uid and gid but another path (a reused cgroup id): not the memo's.
        let moved = process("/other", "/usr/bin/curl");
        assert_eq!(agent_of(&facts.match_in(&moved, &one)), None);
        // Another registry: the memo is dropped, the new selectors decide.
        let two = registry("/other");
        assert_eq!(agent_of(&facts.match_in(&p, &two)), None);
        assert_eq!(
            agent_of(&facts.match_in(&moved, &two)),
            Some("spiffe://t.example/agent/a")
        );
    }

    #[test]
    fn memo_is_bounded_per_key() {
        let mut facts = WorkloadFacts::default();
        let r = registry("/agents/a");
        for i in 0..100 {
            let p = process("/agents/a", &format!("/bin/tool{i}"));
            assert!(agent_of(&facts.match_in(&p, &r)).is_some());
        }
        assert_eq!(facts.matches.len, MATCH_MEMO_PER_KEY);
    }
}
