//! The fingerprint key: a host key kept in a 0600 file, or a configured fleet key so that
//! every host of a fleet gives a credential the same fingerprint.
use std::{fmt, fs::File, path::Path};

use base64::Engine;
use hmac::{Hmac, Mac, digest::KeyInit};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{CredError, CredKind, Fingerprint};
use crate::keyfile::{self, KeyFileError};

/// Bytes of a generated host key.
pub(crate) const HOST_KEY_LEN: usize = 32;
/// Fewest bytes accepted for a fleet key.
pub(crate) const MIN_FLEET_KEY_LEN: usize = 32;
/// SHA-256's block size: HMAC zero-pads keys to it (and hashes longer keys first).
const BLOCK: usize = 64;
/// Prefixed to every fingerprinted value so that this key's HMACs can never be confused
/// with HMACs computed for another purpose, and so the scheme can be versioned.
const DOMAIN: &[u8] = b"agentid/credential/v1\0";

/// HMAC key for credential fingerprints. Wiped on drop; never formatted.
pub struct FingerprintKey {
    // The HMAC key block (RFC 2104: the key zero-padded to the block size, or hashed first
    // when longer). Holding the block instead of the key makes `Hmac::new` infallible.
    block: Zeroizing<[u8; BLOCK]>,
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(<redacted>)")
    }
}

impl FingerprintKey {
    fn from_bytes(key: &[u8]) -> Self {
        let mut block = Zeroizing::new([0u8; BLOCK]);
        if key.len() > BLOCK {
            let digest = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(key)));
            block[..digest.len()].copy_from_slice(&*digest);
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        Self { block }
    }

    /// Loads the host key at `path`, or creates it (32 random bytes, mode 0600) when the
    /// file does not exist. Refuses a symbolic link, a non-regular file, a file another user
    /// owns and a file that group or others may read or write: whoever can read the key can
    /// brute-force short secrets (passwords) from their fingerprints.
    pub fn load_or_create(path: &Path) -> Result<Self, CredError> {
        // One byte more than a key, so a longer file is reported instead of truncated.
        let bytes =
            keyfile::load_or_create(path, HOST_KEY_LEN + 1, || keyfile::random(HOST_KEY_LEN))?;
        if bytes.len() != HOST_KEY_LEN {
            return Err(CredError::KeyFileLength {
                path: path.to_owned(),
                len: bytes.len(),
                expected: HOST_KEY_LEN,
            });
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// A random key that lives only in memory (for `agentid trace`, which redacts secrets
    /// but keeps no fingerprints).
    pub fn ephemeral() -> Result<Self, CredError> {
        Ok(Self::from_bytes(&keyfile::random(HOST_KEY_LEN)?))
    }

    /// A configured fleet key, hex or base64 (standard or URL-safe, padded or not), of at
    /// least 32 bytes. Hosts sharing it agree on every fingerprint.
    pub fn from_fleet_key(encoded: &str) -> Result<Self, CredError> {
        let encoded = encoded.trim();
        let decoded = if !encoded.is_empty()
            && encoded.len().is_multiple_of(2)
            && encoded.bytes().all(|b| b.is_ascii_hexdigit())
        {
            hex::decode(encoded).ok()
        } else {
            let engines = [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            engines.iter().find_map(|e| e.decode(encoded).ok())
        };
        let bytes = Zeroizing::new(decoded.ok_or(CredError::FleetKeyEncoding)?);
        if bytes.len() < MIN_FLEET_KEY_LEN {
            return Err(CredError::FleetKeyTooShort {
                len: bytes.len(),
                min: MIN_FLEET_KEY_LEN,
            });
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// The fingerprint of `secret` (normalized: surrounding ASCII whitespace removed).
    /// `kind` is a label only: the HMAC depends on the value alone.
    pub fn fingerprint(&self, kind: CredKind, secret: &[u8]) -> Fingerprint {
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&(*self.block).into());
        mac.update(DOMAIN);
        mac.update(secret.trim_ascii());
        Fingerprint {
            kind,
            hmac: mac.finalize().into_bytes().into(),
        }
    }
}

/// Opens a credential file without following a symlink or blocking on a FIFO.
pub(super) fn open_nofollow(path: &Path) -> Result<File, CredError> {
    Ok(keyfile::open_nofollow(path)?)
}

impl From<KeyFileError> for CredError {
    fn from(e: KeyFileError) -> Self {
        match e {
            KeyFileError::Io { path, source } => Self::Io { path, source },
            KeyFileError::Random(source) => Self::Io {
                path: "/dev/urandom".into(),
                source,
            },
            KeyFileError::Symlink { path } => Self::Symlink { path },
            KeyFileError::NotRegular { path } => Self::NotRegular { path },
            KeyFileError::ForeignOwner { path, owner, euid } => {
                Self::ForeignOwner { path, owner, euid }
            }
            KeyFileError::InsecureMode { path, mode } => Self::InsecureMode { path, mode },
        }
    }
}
