//! The audit signing key: a 32-byte Ed25519 seed, base64 in a file only its owner can read.
use std::path::Path;

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
            .decode(text.trim_ascii())
            .map_err(|_| key_err(path, "not a base64 Ed25519 seed"))?,
    );
    let seed: &[u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| key_err(path, "not a 32-byte Ed25519 seed"))?;
    Ok(SigningKey::from_bytes(seed))
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
