//! The audit signing key: a 32-byte Ed25519 seed, base64 in a file only its owner can read.
//!
//! Forward security: a log opened with its key file ([`super::AuditLog::open_with_key_file`])
//! replaces the key at every checkpoint. The file then holds the current seed on its first
//! line and `origin <base64 public key>` on the second: the chain's first public key, the
//! one an operator pins (`agentid audit pubkey` prints it) and `verify --pubkey` walks the
//! chain from.
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
    let seed_line = text.lines().next().unwrap_or_default();
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(seed_line.trim())
            .map_err(|_| key_err(path, "not a base64 Ed25519 seed"))?,
    );
    let seed: &[u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| key_err(path, "not a 32-byte Ed25519 seed"))?;
    Ok(SigningKey::from_bytes(seed))
}

/// The chain's first public key: the `origin` line of a rotated key file, or the key's own
/// public key when it was never rotated.
pub fn chain_origin(path: &Path) -> Result<ed25519_dalek::VerifyingKey, AuditError> {
    let key = load_key(path)?;
    match read_origin(path)? {
        Some(origin) => super::parse_public_key(&origin),
        None => Ok(key.verifying_key()),
    }
}

/// The `origin` line of a key file, if any (the file was already checked by `load_key`).
pub(super) fn read_origin(path: &Path) -> Result<Option<String>, AuditError> {
    let text = Zeroizing::new(fs::read_to_string(path).map_err(AuditError::io(path))?);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("origin "))
        .map(|o| o.trim().to_owned()))
}

/// A fresh random key.
pub(super) fn generate() -> Result<SigningKey, AuditError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(seed.as_mut()))
        .map_err(AuditError::io("/dev/urandom"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Where the next key waits (written and synced) while the checkpoint that hands over to
/// it is written: `<key>.next`.
pub(super) fn staged_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".next");
    path.with_file_name(name)
}

/// Writes `key` (with the chain's `origin`) to the staging file, synced, mode 0600.
pub(super) fn stage(path: &Path, key: &SigningKey, origin: &str) -> Result<(), AuditError> {
    let staged = staged_path(path);
    let _ = fs::remove_file(&staged);
    let text = Zeroizing::new(format!(
        "{}\norigin {origin}\n",
        base64::engine::general_purpose::STANDARD.encode(key.to_bytes())
    ));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&staged)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&staged);
        AuditError::Io {
            path: staged.clone(),
            source: e,
        }
    })
}

/// Atomically replaces the key file with the staged key (rename, then the directory
/// synced): the old seed's file is gone; there is never a moment without a whole key.
pub(super) fn commit_staged(path: &Path) -> Result<(), AuditError> {
    let staged = staged_path(path);
    fs::rename(&staged, path).map_err(AuditError::io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(AuditError::io(dir))
}
