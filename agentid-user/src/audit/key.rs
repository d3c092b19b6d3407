//! The audit signing key: a 32-byte Ed25519 seed, base64 in a file only its owner can read.
use std::{
    fs::{self, OpenOptions},
    io::{ErrorKind, Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use super::AuditError;

fn key_err(path: &Path, reason: impl Into<String>) -> AuditError {
    AuditError::Key {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Loads the key at `path`, creating it (mode 0600, atomically) when there is none.
///
/// Refuses a symlink, a non-regular file, a file another user owns, and a file the group or
/// others can read: a key others could read lets them re-sign a forged log.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, AuditError> {
    match load_key(path) {
        Err(AuditError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
        other => return other,
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(seed.as_mut()))
        .map_err(AuditError::io("/dev/urandom"))?;
    let text = Zeroizing::new(format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(seed.as_ref())
    ));
    // Written in full under a temporary name, then hard-linked into place: a crash never
    // leaves a half-written key, and link (unlike rename) fails instead of replacing a key
    // another process created meanwhile.
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map_or_else(|| "audit.key".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(AuditError::Io {
            path: tmp,
            source: e,
        });
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(SigningKey::from_bytes(&seed))
        }
        // Someone else created it first: theirs is the key.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => load_key(path),
        Err(e) => Err(AuditError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Loads an existing key (same checks as [`load_or_create_key`]), never creating one.
pub fn load_key(path: &Path) -> Result<SigningKey, AuditError> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                key_err(path, "is a symlink; refusing to follow it")
            } else {
                AuditError::Io {
                    path: path.to_owned(),
                    source: e,
                }
            }
        })?;
    // Checked on the open file, not the path: no window to swap the file in between.
    let meta = f.metadata().map_err(AuditError::io(path))?;
    if !meta.file_type().is_file() {
        return Err(key_err(path, "not a regular file"));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(key_err(
            path,
            format!("owned by uid {}, not by this user ({euid})", meta.uid()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(key_err(
            path,
            format!(
                "mode {:04o} lets group or others read it; chmod 600 it (and consider the key \
                 leaked)",
                meta.mode() & 0o7777
            ),
        ));
    }
    let mut text = Zeroizing::new(String::new());
    f.read_to_string(&mut text).map_err(AuditError::io(path))?;
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| key_err(path, "not a base64 Ed25519 seed"))?,
    );
    let seed: &[u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| key_err(path, "not a 32-byte Ed25519 seed"))?;
    Ok(SigningKey::from_bytes(seed))
}
