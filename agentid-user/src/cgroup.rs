//! cgroup v2: where the hierarchy is mounted, and cgroup id ↔ path.
//!
//! A cgroup v2 id (`bpf_get_current_cgroup_id`) is the inode number of the cgroup's
//! directory, so ids are mapped to paths by walking the hierarchy; the map is refreshed
//! when an unknown id shows up (a cgroup created after the last walk).
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NotMounted,
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(#[from] procfs::ProcError),
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no such cgroup in the v2 hierarchy at {1}")]
    Outside(PathBuf, PathBuf),
}

/// Mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on most hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), from `/proc/self/mountinfo`.
pub fn v2_root() -> Result<PathBuf, CgroupError> {
    let mounts = procfs::process::Process::myself()?.mountinfo()?;
    mounts
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .ok_or(CgroupError::NotMounted)
}

/// The cgroup id (directory inode) of a cgroup directory.
pub fn id_of(dir: &Path) -> Result<u64, CgroupError> {
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Resolves cgroup ids to paths relative to the hierarchy root (`/` is the root).
#[derive(Debug)]
pub struct Resolver {
    root: PathBuf,
    // Ids are kernfs inode numbers, assigned by the kernel: no need for a keyed hash.
    paths: rustc_hash::FxHashMap<u64, String>,
    last_walk: Option<Instant>,
}

/// Unknown ids trigger at most one walk per this interval, so a flood of events from a
/// cgroup that vanished cannot turn into a flood of directory walks.
const MIN_REWALK: Duration = Duration::from_millis(100);

impl Resolver {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            paths: rustc_hash::FxHashMap::default(),
            last_walk: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Turns a user-given cgroup (absolute filesystem path under the root, or a path
    /// relative to the root such as `/agents/bot`) into the relative form.
    pub fn relative(&self, given: &Path) -> Result<String, CgroupError> {
        let rel = match given.strip_prefix(&self.root) {
            Ok(rel) => rel.to_owned(),
            Err(_) => given.strip_prefix("/").unwrap_or(given).to_owned(),
        };
        let full = self.root.join(&rel);
        if !full.is_dir() {
            return Err(CgroupError::Outside(given.to_owned(), self.root.clone()));
        }
        Ok(format!("/{}", rel.display()).replace("//", "/"))
    }

    /// Path of a cgroup id, walking the hierarchy again if the id is new.
    pub fn path(&mut self, id: u64) -> Option<&str> {
        if !self.paths.contains_key(&id) && self.last_walk.is_none_or(|t| t.elapsed() >= MIN_REWALK)
        {
            self.walk();
        }
        self.paths.get(&id).map(String::as_str)
    }

    /// Every cgroup now, as (id, path), after a fresh walk.
    pub fn all(&mut self) -> Vec<(u64, String)> {
        self.walk();
        self.paths.iter().map(|(id, p)| (*id, p.clone())).collect()
    }

    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        self.paths.clear();
        let mut stack = vec![(self.root.clone(), String::from("/"))];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            self.paths.insert(meta.ino(), rel.clone());
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = entry.file_name();
                    let child = if rel == "/" {
                        format!("/{}", name.to_string_lossy())
                    } else {
                        format!("{rel}/{}", name.to_string_lossy())
                    };
                    stack.push((entry.path(), child));
                }
            }
        }
    }
}

/// Whether `path` is `prefix` or lies below it (component-wise, so `/a/bc` is not under `/a/b`).
pub fn is_within(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::is_within;

    #[test]
    fn subtree_match_is_component_wise() {
        assert!(is_within("/a/b", "/a/b"));
        assert!(is_within("/a/b/c", "/a/b"));
        assert!(!is_within("/a/bc", "/a/b"));
        assert!(!is_within("/a", "/a/b"));
        assert!(is_within("/anything", "/"));
    }
}
