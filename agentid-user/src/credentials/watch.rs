//! Credential files by what they are: device and inode.
//!
//! The kernel reports the inode an open actually reached, whatever path the program passed
//! (a symlink, a hard link, a bind mount, `/proc/self/fd/N`). [`FileWatch`] knows which
//! inodes are credential files: it stats the declared files (`credentials.files`, globs
//! walked from their literal prefix) and the well-known ones under `/root` and every
//! `/home/*` (`.aws/credentials`, `.kube/config`, `.ssh/id_*`, `.config/gcloud/**`) and
//! `/run/secrets/**/token`, and keeps that map current: inotify on every directory it
//! walked says when an entry was created, replaced (renamed over), removed or re-owned, and
//! the next lookup rescans before answering. Files recognised by name elsewhere (`.env`
//! anywhere) are learnt by inode when they are first opened by that name.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::is_well_known_credential_path;
use crate::{event::FileId, identity::Registry, sys::Inotify};

/// Entries a scan visits at most (directories walked under globs and gcloud configs):
/// a bound on the cost of a rescan whatever the tree looks like.
const SCAN_BUDGET: usize = 20_000;
/// How deep a `**` glob or a secrets tree is walked.
const MAX_DEPTH: usize = 8;
/// Rescans at most this many times a second: a home directory where a human works changes
/// all the time. A change past that is rescanned at the next lookup in the next second.
const RESCANS_PER_SECOND: u32 = 20;
/// Learnt files (opened by a well-known name outside the scanned places) kept at most.
const LEARNT_MAX: usize = 4096;

/// A credential file the watch knows: where it is and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub path: PathBuf,
    pub owner: u32,
}

/// Which inodes are credential files, kept current.
#[derive(Debug, Default)]
pub struct FileWatch {
    scanned: HashMap<FileId, Watched>,
    learnt: HashMap<FileId, Watched>,
    /// Changes queued since the last scan; `None` until the first scan (or when inotify is
    /// unavailable: then every miss rescans, within the rate limit).
    inotify: Option<Inotify>,
    /// Rescans in the current one-second window, and when it began.
    window: Option<(Instant, u32)>,
    /// The registry changed, or inotify said something did: rescan before the next answer.
    dirty: bool,
}

impl FileWatch {
    /// The credential file that `id` is, when it is one; on a miss, rescans first when
    /// something changed since the last scan (at most `RESCANS_PER_SECOND`).
    pub fn recognise(&mut self, id: FileId, registry: &Registry) -> Option<Watched> {
        if let Some(w) = self.scanned.get(&id).or_else(|| self.learnt.get(&id)) {
            return Some(w.clone());
        }
        if self.refresh(registry) {
            return self.scanned.get(&id).cloned();
        }
        None
    }

    /// Rescans when due (something changed, or never scanned); whether it did.
    pub fn refresh(&mut self, registry: &Registry) -> bool {
        let changed = match &self.inotify {
            Some(i) => i.drain(),
            None => true,
        };
        self.dirty |= changed;
        if !self.dirty {
            return false;
        }
        let now = Instant::now();
        let (start, count) = match self.window {
            Some((start, count)) if now.duration_since(start) < Duration::from_secs(1) => {
                (start, count)
            }
            _ => (now, 0),
        };
        if count >= RESCANS_PER_SECOND {
            return false;
        }
        self.window = Some((start, count + 1));
        self.scan(registry);
        true
    }

    /// The registry's declared files changed: rescan at the next lookup.
    pub fn invalidate(&mut self) {
        self.dirty = true;
    }

    /// Remembers a credential file recognised by the name it was opened by.
    pub fn learn(&mut self, id: FileId, watched: Watched) {
        if self.learnt.len() >= LEARNT_MAX {
            self.learnt.clear();
        }
        self.learnt.insert(id, watched);
    }

    /// Files known by inode (scanned and learnt).
    pub fn len(&self) -> usize {
        self.scanned.len() + self.learnt.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stats every place a credential file may be, from scratch, and watches the
    /// directories walked (a fresh inotify instance drops the old watches).
    pub fn scan(&mut self, registry: &Registry) {
        let inotify = Inotify::new()
            .inspect_err(
                |e| tracing::debug!(error = %e, "no inotify: credential files rescanned on a miss"),
            )
            .ok();
        let mut scan = Scan {
            files: HashMap::new(),
            inotify: inotify.as_ref(),
            budget: SCAN_BUDGET,
        };
        let well_known = |p: &Path| is_well_known_credential_path(&p.to_string_lossy(), &[]);
        // The well-known places first: a declared `**` glob over a large tree spends the
        // budget only on itself. `/home` itself is watched for new users' homes.
        scan.watch(Path::new("/home"));
        for home in homes() {
            // Watched so that a `.aws` or `.config/gcloud` made later is seen.
            scan.watch(&home);
            scan.watch(&home.join(".config"));
            for dir in [".aws", ".kube", ".ssh"] {
                scan.walk(&home.join(dir), 0, &well_known);
            }
            scan.walk(&home.join(".config/gcloud"), MAX_DEPTH, &well_known);
        }
        for secrets in ["/run/secrets", "/var/run/secrets"] {
            scan.walk(Path::new(secrets), MAX_DEPTH, &well_known);
        }
        let patterns: Vec<&str> = registry
            .agents()
            .iter()
            .flat_map(|a| a.credentials.files.patterns())
            .map(String::as_str)
            .collect();
        let declared = |p: &Path| {
            let text = p.to_string_lossy();
            registry
                .agents()
                .iter()
                .any(|a| a.credentials.owns_file(&text))
        };
        for pattern in patterns {
            let (prefix, depth) = literal_prefix(pattern);
            scan.walk(&prefix, depth, &declared);
        }
        self.scanned = scan.files;
        self.inotify = inotify;
        self.dirty = false;
    }
}

/// One scan's state.
struct Scan<'a> {
    files: HashMap<FileId, Watched>,
    inotify: Option<&'a Inotify>,
    budget: usize,
}

impl Scan<'_> {
    fn watch(&self, dir: &Path) {
        if let Some(i) = self.inotify {
            // A directory that vanished meanwhile is simply not watched.
            let _ = i.watch_dir(dir);
        }
    }

    /// Walks `dir` (watching it and every directory under it, `depth` levels down) and
    /// keeps the regular files `wanted` says are credential files. Symlinks are not
    /// followed: their targets are credential files under their own real path.
    fn walk(&mut self, dir: &Path, depth: usize, wanted: &dyn Fn(&Path) -> bool) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        self.watch(dir);
        for entry in entries.flatten() {
            if self.budget == 0 {
                return;
            }
            self.budget -= 1;
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() && depth > 0 {
                self.walk(&path, depth - 1, wanted);
            } else if meta.file_type().is_file() && wanted(&path) {
                self.files.insert(
                    FileId::of(&meta),
                    Watched {
                        path,
                        owner: meta.uid(),
                    },
                );
            }
        }
    }
}

/// The directory a glob's matches lie under (its components before the first wildcard)
/// and how many levels below it they may be (`MAX_DEPTH` past a `**`). A pattern without
/// wildcards is its parent directory, one level.
fn literal_prefix(pattern: &str) -> (PathBuf, usize) {
    let comps: Vec<&str> = pattern.split('/').collect();
    let wild = |c: &str| c.contains(['*', '?', '[', '{']);
    let first = comps
        .iter()
        .position(|c| wild(c))
        .unwrap_or(comps.len() - 1);
    let prefix = comps[..first].join("/");
    let rest = &comps[first..];
    let depth = if rest.contains(&"**") {
        MAX_DEPTH
    } else {
        rest.len().saturating_sub(1)
    };
    (
        PathBuf::from(if prefix.is_empty() { "/" } else { &prefix }),
        depth,
    )
}

/// `/root` and every directory in `/home`: where the well-known files of humans live.
fn homes() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("/root")];
    if let Ok(entries) = std::fs::read_dir("/home") {
        out.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, symlink};

    use super::*;

    fn registry(dir: &Path) -> Registry {
        let reg = Registry::parse_str(
            &format!(
                "[[agent]]\nid = \"spiffe://t.example/agent/a\"\n[[agent.selectors]]\nuid = 1\n\
                 [agent.credentials]\nfiles = [\"{}/**/*.token\"]\n",
                dir.display()
            ),
            "t.toml",
        );
        assert!(reg.errors().is_empty(), "{:?}", reg.errors());
        reg
    }

    #[test]
    fn prefixes_of_globs() {
        assert_eq!(literal_prefix("/etc/bot/token"), ("/etc/bot".into(), 0));
        assert_eq!(literal_prefix("/etc/bot/*.token"), ("/etc/bot".into(), 0));
        assert_eq!(literal_prefix("/etc/*/token"), ("/etc".into(), 1));
        assert_eq!(
            literal_prefix("/etc/bot/**"),
            ("/etc/bot".into(), MAX_DEPTH)
        );
        assert_eq!(literal_prefix("/*"), ("/".into(), 0));
    }

    #[test]
    fn declared_files_by_inode_kept_current_across_replacement() {
        let dir = std::env::temp_dir().join(format!("agentid-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let file = dir.join("sub/a.token");
        std::fs::write(&file, "one").unwrap();
        let link = dir.join("link");
        symlink(&file, &link).unwrap();
        let reg = registry(&dir);
        let mut watch = FileWatch::default();
        watch.scan(&reg);
        let id = |p: &Path| FileId::of(&std::fs::metadata(p).unwrap());
        // Through the symlink, the inode is the file's.
        let seen = watch.recognise(id(&link), &reg).unwrap();
        assert_eq!(seen.path, file);
        assert_eq!(seen.owner, std::fs::metadata(&file).unwrap().uid());
        // Renamed over: a new inode, known at the next lookup (inotify said so).
        let tmp = dir.join("sub/.new");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(watch.recognise(id(&file), &reg).unwrap().path, file);
        // A file that is no credential file is not recognised.
        let other = dir.join("sub/other.txt");
        std::fs::write(&other, "x").unwrap();
        assert_eq!(watch.recognise(id(&other), &reg), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
