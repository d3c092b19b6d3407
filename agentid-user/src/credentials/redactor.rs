//! Secrets out first: the one place where an event's secrets are found and removed.
//!
//! [`Redactor::scan`] runs on every event *before* anything else sees it (the pipeline
//! calls it first): an exec's environment is scanned and cleared, every argument holding a
//! secret is redacted in place (`--token=[REDACTED openai:3f9a…]`), and a credential file
//! an agent opens is read, fingerprinted and dropped. What leaves is [`Findings`]: keyed
//! fingerprints and where they were seen, never a value. Detection downstream is pure over
//! the attributed event and these findings; all file and `/proc` I/O of the credential
//! path happens here.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::{
    FingerprintKey, Observation, Scanner, Source, is_well_known_credential_path,
    read_credential_file,
    watch::{FileWatch, Watched},
};
use crate::{
    event::{Detail, Event, FileId},
    identity::Registry,
};

/// Credential files remembered (by path, inode, mtime and size) before the cache starts again.
const FILE_CACHE_MAX: usize = 4096;

/// A credential file an event opened: where it really is and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedFile {
    /// Where the file is (the path it is known by), absolute.
    pub path: PathBuf,
    /// The path the program passed, made absolute, when it differs from `path`: a
    /// symlink, a hard link, a bind mount or `/proc/PID/fd/N` reached the same inode.
    pub via: Option<PathBuf>,
    /// The file's owner uid: an agent reading another user's file is a finding.
    pub owner: u32,
}

/// What the redactor found in one event: fingerprints only.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    /// Credentials in the exec's environment and arguments, or in the opened file.
    pub observations: Vec<Observation>,
    /// Set when the event opened a credential file holding at least one credential.
    pub file: Option<OpenedFile>,
}

/// Owns the scanner (and its key) and the credential-file reader with its cache.
#[derive(Debug)]
pub struct Redactor {
    scanner: Scanner,
    /// Findings by (path, inode, mtime, size): a file opened again and unchanged is not
    /// read again.
    file_cache: HashMap<(PathBuf, u64, i64, u64), Vec<Observation>>,
    /// Which inodes are credential files.
    watch: FileWatch,
}

impl Redactor {
    pub fn new(key: FingerprintKey) -> Self {
        Self {
            scanner: Scanner::new(key),
            file_cache: HashMap::new(),
            watch: FileWatch::default(),
        }
    }

    /// From now on, tokens `issuer` signed are recognised as such wherever they are found.
    pub fn set_issuer(&mut self, issuer: std::sync::Arc<dyn super::TokenIssuer>) {
        self.scanner.set_issuer(issuer);
    }

    /// The inode watch: rescanned when the registry changes, refreshed on a timer.
    pub fn watch_mut(&mut self) -> &mut FileWatch {
        &mut self.watch
    }

    /// Scans `event` and removes its secrets in place. `registry` says which files agents
    /// declared as their credential files (besides the well-known ones).
    pub fn scan(&mut self, event: &mut Event, registry: &Registry) -> Findings {
        match &mut event.detail {
            Detail::Exec { argv, env, .. } => {
                let mut observations = self.scanner.scan_env(env.entries());
                env.clear();
                observations.extend(self.redact(argv));
                Findings {
                    observations,
                    file: None,
                }
            }
            Detail::Open { path, inode, .. } => {
                self.credential_file(path, *inode, event.pid, registry)
            }
            Detail::Request {
                host,
                headers,
                credential_headers,
                ..
            } => {
                let host = host.as_deref().unwrap_or_default();
                let observations = self.scanner.scan_headers(host, headers.entries());
                headers.clear();
                for o in &observations {
                    if let Source::Tls { header, .. } = &o.source
                        && !credential_headers.contains(header)
                    {
                        credential_headers.push(header.clone());
                    }
                }
                Findings {
                    observations,
                    file: None,
                }
            }
            _ => Findings::default(),
        }
    }

    /// Redacts secrets in a command line (an exec's, or one read from `/proc`); returns
    /// what was found there.
    pub fn redact(&self, argv: &mut [String]) -> Vec<Observation> {
        let arg_bytes: Vec<&[u8]> = argv.iter().map(String::as_bytes).collect();
        let found = self.scanner.scan_argv(&arg_bytes);
        redact_args(argv, &found);
        found
    }

    /// A file open: when the file is a credential file (well known, or declared by an
    /// agent's `credentials.files`), its content is read (no symlinks, size-capped),
    /// fingerprinted and dropped. Two paths holding the same token are one credential.
    ///
    /// The file is recognised first by the inode the kernel says was opened (whatever
    /// path reached it), then by the path passed (a `.env` anywhere, or an old kernel
    /// without the inode); a file recognised by its path is remembered by inode.
    fn credential_file(
        &mut self,
        passed: &str,
        inode: Option<FileId>,
        pid: u32,
        registry: &Registry,
    ) -> Findings {
        let via = absolute(passed, pid);
        let known = inode.and_then(|id| self.watch.recognise(id, registry));
        let by_name = known.is_none();
        let path = match known {
            Some(w) => w.path,
            None => match &via {
                Some(p) if is_credential_path(p, registry) => p.clone(),
                _ => return Findings::default(),
            },
        };
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return Findings::default();
        };
        // Replaced since it was opened (or the name now leads elsewhere): not what was read.
        if !meta.file_type().is_file() || inode.is_some_and(|id| id != FileId::of(&meta)) {
            return Findings::default();
        }
        if let Some(id) = inode.filter(|_| by_name) {
            self.watch.learn(
                id,
                Watched {
                    path: path.clone(),
                    owner: meta.uid(),
                },
            );
        }
        let key = (path.clone(), meta.ino(), meta.mtime(), meta.len());
        let observations = if let Some(cached) = self.file_cache.get(&key) {
            let mut found = cached.clone();
            // The file is unchanged, but a token's session may have ended since it was read.
            if let Some(issuer) = self.scanner.issuer() {
                for origin in found.iter_mut().filter_map(|o| o.issued.as_mut()) {
                    origin.session_live = issuer.session_live(&origin.session);
                }
            }
            found
        } else {
            let Ok(content) = read_credential_file(&path) else {
                return Findings::default();
            };
            let found = self.scanner.scan_file_content(&path, &content);
            drop(content);
            if self.file_cache.len() >= FILE_CACHE_MAX {
                self.file_cache.clear();
            }
            self.file_cache.insert(key, found.clone());
            found
        };
        let file = (!observations.is_empty()).then(|| OpenedFile {
            via: via.filter(|v| *v != path),
            path,
            owner: meta.uid(),
        });
        Findings { observations, file }
    }
}

/// Replaces each argument that held a secret: `--flag=` prefixes are kept so the
/// command line stays readable.
fn redact_args(argv: &mut [String], found: &[Observation]) {
    for o in found {
        let Source::Arg { index, .. } = &o.source else {
            continue;
        };
        let Some(arg) = argv.get_mut(*index) else {
            continue;
        };
        let keep = if arg.starts_with('-') {
            arg.find('=').map_or(0, |i| i + 1)
        } else {
            0
        };
        *arg = format!("{}[REDACTED {}]", &arg[..keep], o.fingerprint);
    }
}

/// Whether `path` names a credential file: declared by an agent, or well known.
fn is_credential_path(path: &Path, registry: &Registry) -> bool {
    let text = path.to_string_lossy();
    registry
        .agents()
        .iter()
        .any(|a| a.credentials.owns_file(&text))
        || is_well_known_credential_path(&text, &[])
}

/// An opened path made absolute: relative paths are resolved against the process's
/// working directory (read once, from `/proc`; `None` if the process is gone).
fn absolute(path: &str, pid: u32) -> Option<PathBuf> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Some(p.to_owned());
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    Some(cwd.join(p))
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, time::SystemTime};

    use super::*;
    use crate::event::{EventKind, SecretEnv};

    const KEY: &str = "sk-proj-Zq8X2mN4vB7cL1kJ9hG3fD5sA0pO6iU8yT2rE4wQ";

    fn event(detail: Detail) -> Event {
        Event {
            kind: EventKind::Exec,
            time: SystemTime::UNIX_EPOCH,
            ktime_ns: 0,
            proc_start_ns: None,
            pid: std::process::id(),
            ppid: None,
            tid: 0,
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            cgroup: None,
            comm: String::new(),
            blocked: false,
            detail,
        }
    }

    fn exec(argv: &[&str], env: &str) -> Event {
        event(Detail::Exec {
            filename: "/bin/true".into(),
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            argv_truncated: false,
            argv_missing: false,
            scan_incomplete: None,
            loginuid: None,
            env: SecretEnv::new(env.as_bytes()),
        })
    }

    fn redactor() -> Redactor {
        Redactor::new(FingerprintKey::ephemeral().unwrap())
    }

    #[test]
    fn exec_secrets_are_fingerprinted_and_gone() {
        let mut r = redactor();
        let registry = Registry::default();
        let flag = format!("--api-key={KEY}");
        let mut ev = exec(
            &["tool", &flag, KEY],
            &format!("HOME=/root\0OPENAI_API_KEY={KEY}\0"),
        );
        let found = r.scan(&mut ev, &registry);
        // One credential, seen three times, under one fingerprint.
        assert_eq!(found.observations.len(), 3, "{:?}", found.observations);
        let fp = &found.observations[0].fingerprint;
        assert!(found.observations.iter().all(|o| &o.fingerprint == fp));
        assert_eq!(found.file, None);
        let Detail::Exec { argv, env, .. } = &ev.detail else {
            unreachable!()
        };
        assert_eq!(argv[0], "tool");
        assert_eq!(argv[1], format!("--api-key=[REDACTED {fp}]"));
        assert_eq!(argv[2], format!("[REDACTED {fp}]"));
        assert_eq!(env.entries().count(), 0, "the environment is cleared");
        // Canary: the value is nowhere in what leaves.
        let shown = format!("{ev:?} {found:?} {}", serde_json::to_string(&ev).unwrap());
        assert!(!shown.contains(KEY), "{shown}");
    }

    #[test]
    fn clean_exec_is_untouched() {
        let mut r = redactor();
        let mut ev = exec(&["ls", "-l", "/tmp"], "HOME=/root\0PATH=/bin\0");
        let found = r.scan(&mut ev, &Registry::default());
        assert_eq!(found, Findings::default());
        let Detail::Exec { argv, .. } = &ev.detail else {
            unreachable!()
        };
        assert_eq!(argv, &["ls", "-l", "/tmp"]);
    }

    #[test]
    fn declared_credential_file_is_read_once_per_version() {
        let dir = std::env::temp_dir().join(format!("agentid-redactor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, format!("{KEY}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let registry = Registry::parse_str(
            &format!(
                "[[agent]]\nid = \"spiffe://t.example/agent/a\"\n[[agent.selectors]]\nuid = 1\n\
                 [agent.credentials]\nfiles = [\"{}/*\"]\n",
                dir.display()
            ),
            "t.toml",
        );
        assert!(registry.errors().is_empty(), "{:?}", registry.errors());
        let mut r = redactor();
        let open = |p: &Path| {
            event(Detail::Open {
                path: p.to_string_lossy().into_owned(),
                open_flags: 0,
                inode: std::fs::metadata(p).ok().map(|m| FileId::of(&m)),
            })
        };
        let first = r.scan(&mut open(&file), &registry);
        assert_eq!(first.observations.len(), 1);
        let opened = first.file.clone().unwrap();
        assert_eq!(opened.path, file);
        assert_eq!(opened.owner, std::fs::metadata(&file).unwrap().uid());
        // The same version again comes from the cache with the same verdict.
        assert_eq!(r.scan(&mut open(&file), &registry), first);
        assert_eq!(r.file_cache.len(), 1);
        // An undeclared, not well-known file is not read at all.
        let other = std::env::temp_dir().join(format!("agentid-other-{}", std::process::id()));
        std::fs::write(&other, KEY).unwrap();
        assert_eq!(r.scan(&mut open(&other), &registry), Findings::default());
        // A declared path that is a symlink to another file is not that file: nothing.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&other, &link).unwrap();
        assert_eq!(r.scan(&mut open(&link), &registry), Findings::default());
        // The declared file under a name no pattern matches (a hard link) is recognised by
        // the inode opened, and says which name was used.
        let hard = std::env::temp_dir().join(format!("agentid-hard-{}", std::process::id()));
        let _ = std::fs::remove_file(&hard);
        std::fs::hard_link(&file, &hard).unwrap();
        let found = r.scan(&mut open(&hard), &registry);
        assert_eq!(found.observations, first.observations);
        let opened = found.file.unwrap();
        assert_eq!(
            (opened.path, opened.via),
            (file.clone(), Some(hard.clone()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(&other).unwrap();
        std::fs::remove_file(&hard).unwrap();
    }

    /// An issuer whose one token's session ends when told.
    #[derive(Debug, Default)]
    struct Ending(std::sync::atomic::AtomicBool);

    impl crate::credentials::TokenIssuer for Ending {
        fn recognise(
            &self,
            _: &[u8],
            _: &crate::credentials::Fingerprint,
        ) -> Option<crate::credentials::TokenOrigin> {
            Some(crate::credentials::TokenOrigin {
                jti: "j".into(),
                kid: "k".into(),
                agent: "spiffe://t.example/agent/a".into(),
                session: "a/1-1".into(),
                acting_for: Vec::new(),
                exp: 0,
                session_live: self.session_live("a/1-1"),
            })
        }

        fn session_live(&self, _: &str) -> bool {
            !self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// A token file read while its session lived and opened again, unchanged, after the
    /// session ended comes from the cache — judged again, as ended.
    #[test]
    fn a_cached_token_file_is_judged_again_by_its_session() {
        let dir = std::env::temp_dir().join(format!("agentid-redactor-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(".env");
        std::fs::write(
            &file,
            "SVID=eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlc2ln\n",
        )
        .unwrap();
        let issuer = std::sync::Arc::new(Ending::default());
        let mut r = redactor();
        r.set_issuer(issuer.clone());
        let open = || {
            event(Detail::Open {
                path: file.to_string_lossy().into_owned(),
                open_flags: 0,
                inode: std::fs::metadata(&file).ok().map(|m| FileId::of(&m)),
            })
        };
        let live = |f: &Findings| f.observations[0].issued.as_ref().map(|t| t.session_live);
        let registry = Registry::default();
        assert_eq!(live(&r.scan(&mut open(), &registry)), Some(true));
        issuer.0.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(live(&r.scan(&mut open(), &registry)), Some(false));
        assert_eq!(r.file_cache.len(), 1, "the second open came from the cache");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn seeded_command_lines_are_redacted() {
        let r = redactor();
        let mut argv = vec!["curl".to_owned(), "-H".to_owned(), KEY.to_owned()];
        let found = r.redact(&mut argv);
        assert_eq!(found.len(), 1);
        assert!(argv[2].starts_with("[REDACTED openai:"), "{argv:?}");
    }
}
