//! Credentials: secret observations → keyed fingerprints.
//!
//! Agents carry credentials in environment variables, command-line arguments and files.
//! This stage recognises them and turns each secret value into a [`Fingerprint`]
//! (HMAC-SHA-256 under a host or fleet [`FingerprintKey`]) *at the point of detection*:
//! an [`Observation`] holds the kind, the fingerprint and where it was seen, never the
//! value. The value is never stored, logged, formatted or returned by anything here.
//!
//! A fingerprint's identity is the value alone (the kind is a label), so the same token
//! seen as an environment variable, an argument and a file content is one credential.
//! Because the HMAC is keyed, a low-entropy secret (a password) cannot be brute-forced from
//! a fingerprint without the key: protect the key file like the secrets themselves.
mod detect;
mod files;
mod fingerprint;
mod headers;
mod issued;
mod key;
mod redactor;
mod revocations;
mod watch;

use std::{fmt, path::PathBuf, sync::Arc};

use serde::Serialize;
use zeroize::Zeroizing;

pub use detect::CredKind;
pub use files::{MAX_CREDENTIAL_FILE, is_well_known_credential_path, read_credential_file};
pub use fingerprint::{Fingerprint, FingerprintPrefix, ParseFingerprintError};
pub use issued::{TokenIssuer, TokenOrigin};
pub use key::FingerprintKey;
pub use redactor::{Findings, OpenedFile, Redactor};
pub use revocations::{RevocationError, Revocations};
pub use watch::{FileWatch, Watched};

#[derive(Debug, thiserror::Error)]
pub enum CredError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is a symbolic link; refusing to follow it")]
    Symlink { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error(
        "key file {path} has mode {mode:04o}, readable or writable by group or others; \
         it must be 0600 (chmod 600 {path})"
    )]
    InsecureMode { path: PathBuf, mode: u32 },
    #[error("key file {path} is owned by uid {owner}, not by this process's uid {euid}")]
    ForeignOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("key file {path} holds {len} bytes; expected exactly {expected}")]
    KeyFileLength {
        path: PathBuf,
        len: usize,
        expected: usize,
    },
    // The configured value is never echoed: it is the fleet key.
    #[error("fleet key is neither hex nor base64")]
    FleetKeyEncoding,
    #[error("fleet key has {len} bytes; at least {min} are required")]
    FleetKeyTooShort { len: usize, min: usize },
    #[error("{path} is larger than {max} bytes; not read as a credential file")]
    TooLarge { path: PathBuf, max: usize },
}

/// Secret bytes (a credential file's content): wiped on drop, never formatted, not
/// `Clone`, so that no unwiped copy is made by accident. Read through `Deref<[u8]>`.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub(crate) fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(bytes)
    }
}

impl std::ops::Deref for SecretBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted, {} bytes>)", self.0.len())
    }
}

/// Where a credential was seen. Holds names and positions, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source {
    /// An environment variable; `name` is the variable's NAME only.
    Env { name: String },
    /// A command-line argument at `index` (0 is the program), introduced by `flag` when
    /// the value followed a flag such as `--token`.
    Arg { index: usize, flag: Option<String> },
    /// A file whose content held the credential.
    File { path: PathBuf },
    /// A header of an HTTP request sent over TLS: the request's host (empty when it named
    /// none) and the header's lowercase name.
    Tls { host: String, header: String },
}

/// One credential seen at one place.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Observation {
    pub kind: CredKind,
    pub fingerprint: Fingerprint,
    pub source: Source,
    /// Set when the credential is a token agentid's issuer signed: who it was minted for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued: Option<Box<TokenOrigin>>,
}

/// Finds credentials and fingerprints them under one key.
#[derive(Debug)]
pub struct Scanner {
    key: FingerprintKey,
    /// Environment entries already scanned and found clean, by a keyed 64-bit hash.
    ///
    /// Children inherit their parent's environment, so the same entries (`PATH=…`,
    /// `HOME=…`) come with nearly every exec; scanning each again was a quarter of the
    /// pipeline's time. Only clean entries are remembered (never anything about a
    /// secret), and the hash is keyed per process (`SipHash` with a random key), so a
    /// workload cannot craft a secret-bearing entry that collides with a clean one.
    clean_env: rustc_hash::FxHashSet<u64>,
    clean_hasher: std::hash::RandomState,
    /// The daemon's token issuer, when `[issuer]` is on: recognises its own tokens.
    issuer: Option<Arc<dyn TokenIssuer>>,
}

/// Clean entries remembered before the set is emptied and starts again.
const CLEAN_ENV_MAX: usize = 16_384;

impl Scanner {
    pub fn new(key: FingerprintKey) -> Self {
        Self {
            key,
            clean_env: rustc_hash::FxHashSet::default(),
            clean_hasher: std::hash::RandomState::new(),
            issuer: None,
        }
    }

    pub fn key(&self) -> &FingerprintKey {
        &self.key
    }

    /// From now on, tokens `issuer` signed are recognised as such ([`Observation::issued`]).
    pub fn set_issuer(&mut self, issuer: Arc<dyn TokenIssuer>) {
        self.issuer = Some(issuer);
    }

    /// The issuer, to judge a cached finding's session again.
    pub fn issuer(&self) -> Option<&dyn TokenIssuer> {
        self.issuer.as_deref()
    }

    fn keys(&self) -> issued::Keys<'_> {
        issued::Keys::new(&self.key, self.issuer.as_deref())
    }

    /// Scans an environment: each entry is the raw `NAME=value` bytes of one variable
    /// (non-UTF-8 tolerated; entries without `=` are skipped).
    pub fn scan_env<'a>(&mut self, entries: impl Iterator<Item = &'a [u8]>) -> Vec<Observation> {
        use std::hash::BuildHasher as _;
        let mut out = Vec::new();
        // Fields, not `self.keys()`: `clean_env` is written while `keys` is held.
        let keys = issued::Keys::new(&self.key, self.issuer.as_deref());
        for entry in entries {
            let Some(eq) = entry.iter().position(|&b| b == b'=') else {
                continue;
            };
            let hash = self.clean_hasher.hash_one(entry);
            if self.clean_env.contains(&hash) {
                continue;
            }
            let (name, value) = (&entry[..eq], &entry[eq + 1..]);
            let found = detect::assignment(&keys, name, value).into_vec();
            if found.is_empty() {
                if self.clean_env.len() >= CLEAN_ENV_MAX {
                    self.clean_env.clear();
                }
                self.clean_env.insert(hash);
                continue;
            }
            let source = Source::Env {
                name: String::from_utf8_lossy(name).into_owned(),
            };
            for (kind, fingerprint) in found {
                out.push(Observation {
                    kind,
                    fingerprint,
                    source: source.clone(),
                    issued: None,
                });
            }
        }
        keys.attach(&mut out);
        out
    }

    /// Scans a command line (`args[0]` is the program).
    pub fn scan_argv(&self, args: &[&[u8]]) -> Vec<Observation> {
        let keys = self.keys();
        let mut out: Vec<Observation> = detect::argv(&keys, args)
            .into_iter()
            .map(|(index, flag, kind, fingerprint)| Observation {
                kind,
                fingerprint,
                source: Source::Arg { index, flag },
                issued: None,
            })
            .collect();
        keys.attach(&mut out);
        out
    }

    /// Scans an HTTP request's header fields (`name: value` entries) sent to `host`.
    pub fn scan_headers<'a>(
        &self,
        host: &str,
        fields: impl Iterator<Item = &'a [u8]>,
    ) -> Vec<Observation> {
        let mut out = Vec::new();
        let keys = self.keys();
        for entry in fields {
            let Some((header, found)) = headers::field(&keys, entry) else {
                continue;
            };
            let source = Source::Tls {
                host: host.to_owned(),
                header,
            };
            for (kind, fingerprint) in found.into_vec() {
                out.push(Observation {
                    kind,
                    fingerprint,
                    source: source.clone(),
                    issued: None,
                });
            }
        }
        keys.attach(&mut out);
        out
    }

    /// Scans the content of a credential file (see [`read_credential_file`]).
    pub fn scan_file_content(&self, path: &std::path::Path, content: &[u8]) -> Vec<Observation> {
        let keys = self.keys();
        let mut out: Vec<Observation> = files::scan_content(&keys, content)
            .into_iter()
            .map(|(kind, fingerprint)| Observation {
                kind,
                fingerprint,
                source: Source::File {
                    path: path.to_owned(),
                },
                issued: None,
            })
            .collect();
        keys.attach(&mut out);
        out
    }
}

#[cfg(test)]
mod tests;
