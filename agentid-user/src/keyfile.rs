//! Secret key files (the fingerprint key, the audit signing key): loaded only when they are
//! private to this user, created exclusively and atomically when missing.
//!
//! The checks run on the open file, not on the path, so there is no window to swap the file
//! in between. Creation writes the whole key under a temporary name and hard-links it into
//! place: a crash never leaves a half-written key, and link (unlike rename) fails instead of
//! replacing a key that another starter created, and may be using, meanwhile.
use std::{
    fs::{DirBuilder, File, OpenOptions, Permissions},
    io::{self, ErrorKind, Read as _, Write as _},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use zeroize::Zeroizing;

use crate::sys;

/// Numbers the temporary files of concurrent creations in one process.
static ATTEMPT: AtomicU64 = AtomicU64::new(0);

/// Why a key file was refused or could not be read or written. Callers turn it into their
/// own error type (and wording); it never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the kernel's random source: {0}")]
    Random(#[source] io::Error),
    #[error("{path} is a symbolic link; refusing to follow it")]
    Symlink { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path} is owned by uid {owner}, not by this process's uid {euid}")]
    ForeignOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    /// `mode` is the file's permission bits (`& 0o7777`).
    #[error("{path} has mode {mode:04o}: group or others may read or write it")]
    InsecureMode { path: PathBuf, mode: u32 },
}

impl KeyFileError {
    /// The file is not there (and nothing, not even a dangling symlink, is in its place).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == ErrorKind::NotFound)
    }
}

/// Opens `path` for reading without following a symlink in its last component (an error
/// [`KeyFileError::Symlink`]) and without blocking: a FIFO planted at the path must not
/// hang the daemon in open or read.
pub fn open_nofollow(path: &Path) -> Result<File, KeyFileError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(sys::O_NOFOLLOW | sys::O_NONBLOCK | sys::O_CLOEXEC)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(sys::ELOOP) {
                KeyFileError::Symlink {
                    path: path.to_owned(),
                }
            } else {
                KeyFileError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })
}

/// Reads the key file at `path`: at most `limit` bytes (read one more than the longest valid
/// key, so the caller can tell a longer file from a key). Refuses a symlink, a non-regular
/// file, a file another user owns (they could read the key) and one group or others may read
/// or write.
pub fn load(path: &Path, limit: usize) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = open_nofollow(path)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(KeyFileError::NotRegular {
            path: path.to_owned(),
        });
    }
    let euid = sys::geteuid();
    if meta.uid() != euid {
        return Err(KeyFileError::ForeignOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::InsecureMode {
            path: path.to_owned(),
            mode,
        });
    }
    // Sized up front: growing a Vec would leave copies of the key in freed memory.
    let mut buf = Zeroizing::new(vec![0u8; limit]);
    let mut len = 0;
    while len < limit {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// [`load`]s the key file at `path`, or, when there is none, creates it (mode 0600, its
/// directory 0700 when missing) holding `contents()`. Returns the file's bytes: ours, or those
/// of a concurrent starter that created it first.
pub fn load_or_create(
    path: &Path,
    limit: usize,
    contents: impl FnOnce() -> Result<Zeroizing<Vec<u8>>, KeyFileError>,
) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    match load(path, limit) {
        Err(e) if e.is_not_found() => {}
        other => return other,
    }
    let contents = contents()?;
    if create(path, &contents)? {
        Ok(contents)
    } else {
        // Someone else created it first: theirs is the key.
        load(path, limit)
    }
}

/// `n` bytes from the kernel's CSPRNG, for a new key.
pub fn random(n: usize) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let mut key = Zeroizing::new(vec![0u8; n]);
    sys::fill_random(&mut key).map_err(KeyFileError::Random)?;
    Ok(key)
}

/// Creates `path` holding `contents`; `false` when a file already exists there.
fn create(path: &Path, contents: &[u8]) -> Result<bool, KeyFileError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| KeyFileError::Io { path: p, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = path
        .file_name()
        .map_or_else(|| "key".into(), |n| n.to_string_lossy().into_owned());
    // Unique per process, thread and attempt: create_new must not trip over a sibling.
    let attempt = ATTEMPT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{nanos}.{attempt}",
        std::process::id()
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(sys::O_NOFOLLOW | sys::O_CLOEXEC)
            .open(&tmp)?;
        // The umask can only remove bits; set the mode exactly anyway.
        f.set_permissions(Permissions::from_mode(0o600))?;
        f.write_all(contents)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // Make the new directory entry durable before anything depends on the key.
            let _ = File::open(&dir).and_then(|d| d.sync_all());
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop (also when a test fails).
    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Self {
            let attempt = ATTEMPT.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!(
                "agentid-keyfile-{tag}-{}-{attempt}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        fn entries(&self) -> usize {
            std::fs::read_dir(&self.0).unwrap().count()
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fixed(v: &[u8]) -> impl FnOnce() -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
        let v = v.to_vec();
        move || Ok(Zeroizing::new(v))
    }

    #[test]
    fn created_0600_in_a_new_0700_dir_then_reloaded() {
        let d = Dir::new("create");
        let path = d.0.join("sub/k.key");
        let got = load_or_create(&path, 33, fixed(b"first")).unwrap();
        assert_eq!(&got[..], b"first");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(
            std::fs::metadata(d.0.join("sub")).unwrap().mode() & 0o7777,
            0o700
        );
        // The generator is not called when the file exists: the stored key wins.
        let again = load_or_create(&path, 33, || panic!("must not generate")).unwrap();
        assert_eq!(&again[..], b"first");
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(d.0.join("sub")).unwrap().count(), 1);
    }

    #[test]
    fn wrong_mode_refused_with_the_mode() {
        let d = Dir::new("mode");
        let path = d.0.join("k.key");
        load_or_create(&path, 8, fixed(b"k")).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o602, 0o660] {
            std::fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
            let err = load(&path, 8).unwrap_err();
            assert!(
                matches!(err, KeyFileError::InsecureMode { mode: m, .. } if m == mode),
                "{mode:o}: {err:?}"
            );
            // A refused key is never replaced by a fresh one.
            assert!(matches!(
                load_or_create(&path, 8, || panic!("must not generate")),
                Err(KeyFileError::InsecureMode { .. })
            ));
        }
        std::fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&load(&path, 8).unwrap()[..], b"k");
    }

    #[test]
    fn foreign_owner_refused() {
        // Only root can hand a file to another user; elsewhere this cannot be set up.
        if sys::geteuid() != 0 {
            return;
        }
        let d = Dir::new("owner");
        let path = d.0.join("k.key");
        load_or_create(&path, 8, fixed(b"k")).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        assert!(matches!(
            load(&path, 8),
            Err(KeyFileError::ForeignOwner {
                owner: 65534,
                euid: 0,
                ..
            })
        ));
    }

    #[test]
    fn symlinks_fifos_and_directories_refused() {
        let d = Dir::new("kinds");
        let real = d.0.join("real.key");
        load_or_create(&real, 8, fixed(b"k")).unwrap();
        let link = d.0.join("link.key");
        symlink(&real, &link).unwrap();
        assert!(matches!(
            load_or_create(&link, 8, || panic!("must not generate")),
            Err(KeyFileError::Symlink { .. })
        ));
        // A dangling symlink is not "missing": nothing is created through it.
        let dangling = d.0.join("dangling.key");
        symlink(d.0.join("nowhere"), &dangling).unwrap();
        assert!(load_or_create(&dangling, 8, fixed(b"k")).is_err());
        assert!(!d.0.join("nowhere").exists());
        // A FIFO is neither waited on nor read.
        let fifo = d.0.join("fifo.key");
        let status = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(matches!(
            load(&fifo, 8),
            Err(KeyFileError::NotRegular { .. })
        ));
        std::fs::create_dir(d.0.join("dir.key")).unwrap();
        assert!(matches!(
            load(&d.0.join("dir.key"), 8),
            Err(KeyFileError::NotRegular { .. })
        ));
    }

    #[test]
    fn truncated_and_overlong_files_are_returned_as_read() {
        let d = Dir::new("len");
        let path = d.0.join("k.key");
        std::fs::write(&path, b"0123456789").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        // A short file comes back short (the caller refuses it), never padded.
        assert_eq!(&load(&path, 33).unwrap()[..], b"0123456789");
        // Reading stops at the limit: a long file cannot make the daemon read it all.
        assert_eq!(&load(&path, 4).unwrap()[..], b"0123");
        std::fs::write(&path, b"").unwrap();
        assert!(load(&path, 33).unwrap().is_empty());
    }

    #[test]
    fn concurrent_create_has_one_winner() {
        let d = Dir::new("race");
        let path = d.0.join("race.key");
        let got: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || {
                        load_or_create(path, 8, fixed(&[b'a' + i]))
                            .unwrap()
                            .to_vec()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Every starter ends up with the key that is on disk: the link never replaced one.
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 1);
        assert!(got.iter().all(|k| *k == on_disk), "{got:?} vs {on_disk:?}");
        assert_eq!(d.entries(), 1, "temporary files left behind");
    }

    #[test]
    fn failed_generator_creates_nothing() {
        let d = Dir::new("gen");
        let path = d.0.join("k.key");
        let err = load_or_create(&path, 8, || {
            Err(KeyFileError::Random(io::Error::other("no entropy")))
        })
        .unwrap_err();
        assert!(matches!(err, KeyFileError::Random(_)), "{err:?}");
        assert_eq!(d.entries(), 0);
    }

    #[test]
    fn random_keys_differ() {
        let (a, b) = (random(32).unwrap(), random(32).unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
