//! The audit signing key: a 32-byte Ed25519 seed, base64 in a file only its owner can read.
//!
//! Forward security: a log opened with its key file ([`super::AuditLog::open_with_key_file`])
//! replaces the key at every checkpoint. The file then holds the current seed on its first
//! line and `origin <base64 public key>` on the second: the chain's first public key, the
//! one an operator pins (`agentid audit pubkey` prints it) and `verify --pubkey` walks the
//! chain from.
use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use super::AuditError;
use crate::keyfile::{self, KeyFileError};

/// Bytes read at most: the base64 seed and its newline are 45, whitespace around it is
/// tolerated, a longer file is not a seed.
const READ_LIMIT: usize = 4096;

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
    let text = keyfile::load_or_create(path, READ_LIMIT, || {
        let seed = keyfile::random(32)?;
        let text = base64::engine::general_purpose::STANDARD.encode(&seed[..]);
        let mut line = Zeroizing::new(Vec::with_capacity(text.len() + 1));
        line.extend_from_slice(Zeroizing::new(text).as_bytes());
        line.push(b'\n');
        Ok(line)
    })
    .map_err(|e| key_error(path, e))?;
    parse(path, &text)
}

/// Loads an existing key (same checks as [`load_or_create_key`]), never creating one.
pub fn load_key(path: &Path) -> Result<SigningKey, AuditError> {
    let text = keyfile::load(path, READ_LIMIT).map_err(|e| key_error(path, e))?;
    parse(path, &text)
}

fn parse(path: &Path, text: &[u8]) -> Result<SigningKey, AuditError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(first_line(text).trim_ascii())
            .map_err(|_| key_err(path, "not a base64 Ed25519 seed"))?,
    );
    let seed: &[u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| key_err(path, "not a 32-byte Ed25519 seed"))?;
    Ok(SigningKey::from_bytes(seed))
}

/// The seed line: a rotated key file has the chain's `origin` after it.
fn first_line(text: &[u8]) -> &[u8] {
    text.split(|&b| b == b'\n').next().unwrap_or_default()
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

/// The `origin` line of a key file, if any (same checks as [`load_key`]).
pub(super) fn read_origin(path: &Path) -> Result<Option<String>, AuditError> {
    let text = keyfile::load(path, READ_LIMIT).map_err(|e| key_error(path, e))?;
    Ok(text
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"origin "))
        .map(|o| String::from_utf8_lossy(o.trim_ascii()).into_owned()))
}

/// A fresh random key.
pub(super) fn generate() -> Result<SigningKey, AuditError> {
    let seed = keyfile::random(32).map_err(|e| key_error(Path::new("/dev/urandom"), e))?;
    let seed: &[u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| key_err(Path::new("/dev/urandom"), "short read"))?;
    Ok(SigningKey::from_bytes(seed))
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
    let seed = Zeroizing::new(key.to_bytes());
    let seed_b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&seed[..]));
    let text = Zeroizing::new(format!("{}\norigin {origin}\n", seed_b64.as_str()));
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

/// The audit log's wording for a refused key file.
fn key_error(path: &Path, e: KeyFileError) -> AuditError {
    match e {
        KeyFileError::Io { path, source } => AuditError::Io { path, source },
        KeyFileError::Random(source) => AuditError::Io {
            path: "/dev/urandom".into(),
            source,
        },
        KeyFileError::Symlink { .. } => key_err(path, "is a symlink; refusing to follow it"),
        KeyFileError::NotRegular { .. } => key_err(path, "not a regular file"),
        KeyFileError::ForeignOwner { owner, euid, .. } => key_err(
            path,
            format!("owned by uid {owner}, not by this user ({euid})"),
        ),
        KeyFileError::InsecureMode { mode, .. } => key_err(
            path,
            format!(
                "mode {mode:04o} lets group or others read it; chmod 600 it (and consider the key \
                 leaked)"
            ),
        ),
    }
}
