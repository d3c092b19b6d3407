//! The fingerprint key: a host key kept in a 0600 file, or a configured fleet key so that
//! every host of a fleet gives a credential the same fingerprint.
use std::{
    fmt,
    fs::{File, OpenOptions, Permissions},
    io::{ErrorKind, Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use hmac::{Hmac, Mac, digest::KeyInit};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{CredError, CredKind, Fingerprint};

/// Bytes of a generated host key.
pub const HOST_KEY_LEN: usize = 32;
/// Fewest bytes accepted for a fleet key.
pub const MIN_FLEET_KEY_LEN: usize = 32;
/// SHA-256's block size: HMAC zero-pads keys to it (and hashes longer keys first).
const BLOCK: usize = 64;
/// Prefixed to every fingerprinted value so that this key's HMACs can never be confused
/// with HMACs computed for another purpose, and so the scheme can be versioned.
const DOMAIN: &[u8] = b"agentid/credential/v1\0";
/// Numbers temp files of concurrent key creations in one process.
static ATTEMPT: AtomicU64 = AtomicU64::new(0);

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
    /// file does not exist. Refuses a symbolic link, a non-regular file and a file that
    /// group or others may read or write.
    pub fn load_or_create(path: &Path) -> Result<Self, CredError> {
        match Self::load(path) {
            Err(CredError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                Self::create(path)
            }
            other => other,
        }
    }

    fn load(path: &Path) -> Result<Self, CredError> {
        let io = |source| CredError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = open_nofollow(path)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.file_type().is_file() {
            return Err(CredError::NotRegular {
                path: path.to_owned(),
            });
        }
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        // Another user who owns the file can read the key, and with it brute-force short
        // secrets (passwords) from their fingerprints.
        if meta.uid() != euid {
            return Err(CredError::ForeignOwner {
                path: path.to_owned(),
                owner: meta.uid(),
                euid,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(CredError::InsecureMode {
                path: path.to_owned(),
                mode,
            });
        }
        // One byte more than a key, so a longer file is reported instead of truncated.
        let mut buf = Zeroizing::new([0u8; HOST_KEY_LEN + 1]);
        let mut len = 0;
        while len < buf.len() {
            match file.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        if len != HOST_KEY_LEN {
            return Err(CredError::KeyFileLength {
                path: path.to_owned(),
                len,
                expected: HOST_KEY_LEN,
            });
        }
        Ok(Self::from_bytes(&buf[..HOST_KEY_LEN]))
    }

    fn create(path: &Path) -> Result<Self, CredError> {
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| CredError::Io { path: p, source }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;

        let mut key = Zeroizing::new([0u8; HOST_KEY_LEN]);
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key[..]))
            .map_err(io(Path::new("/dev/urandom")))?;

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
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            // The umask can only remove bits; set the mode exactly anyway.
            f.set_permissions(Permissions::from_mode(0o600))?;
            f.write_all(&key[..])?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        // A hard link, not a rename: link fails when `path` already exists, so two daemons
        // starting at once cannot replace each other's key after one of them began using it.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                // Make the new directory entry durable before fingerprints depend on it.
                let _ = File::open(&dir).and_then(|d| d.sync_all());
                Ok(Self::from_bytes(&key[..]))
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io(path)(e)),
        }
    }

    /// A random key that lives only in memory (for `agentid trace`, which redacts secrets
    /// but keeps no fingerprints).
    pub fn ephemeral() -> Result<Self, CredError> {
        let mut key = Zeroizing::new([0u8; HOST_KEY_LEN]);
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key[..]))
            .map_err(|source| CredError::Io {
                path: PathBuf::from("/dev/urandom"),
                source,
            })?;
        Ok(Self::from_bytes(&key[..]))
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

pub(super) fn open_nofollow(path: &Path) -> Result<File, CredError> {
    OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO planted at the path must not block the daemon in open or read.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(libc::ELOOP) {
                CredError::Symlink {
                    path: path.to_owned(),
                }
            } else {
                CredError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })
}
