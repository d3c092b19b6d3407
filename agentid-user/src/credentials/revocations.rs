//! Revoked credentials, persisted: one fingerprint prefix per line in `STATE/revoked`, as
//! the operator typed it (`agentid credentials revoke openai:3f9a0c1d2e4b`). The file holds
//! fingerprint prefixes only, never a secret.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use super::{FingerprintPrefix, ParseFingerprintError};

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("{input:?}: {source}")]
    Parse {
        input: String,
        source: ParseFingerprintError,
    },
    #[error("recording the revocation in {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading revocations from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The revocation file of one state directory.
#[derive(Debug, Clone)]
pub struct Revocations {
    path: PathBuf,
}

impl Revocations {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("revoked"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every revocation recorded so far. No file yet is none; a line that does not parse
    /// (edited by hand) is skipped with a warning rather than failing the start.
    pub fn load(&self) -> Result<Vec<FingerprintPrefix>, RevocationError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(RevocationError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| match l.trim().parse() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), line = l.trim(), error = %e, "skipping an unreadable revocation");
                    None
                }
            })
            .collect())
    }

    /// Parses `input` and, only if it is a valid prefix, appends it to the file. The caller
    /// applies the returned prefix to the detector.
    pub fn add(&self, input: &str) -> Result<FingerprintPrefix, RevocationError> {
        let prefix: FingerprintPrefix = input.parse().map_err(|source| RevocationError::Parse {
            input: input.to_owned(),
            source,
        })?;
        let write = |source| RevocationError::Write {
            path: self.path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(write)?;
        writeln!(f, "{}", input.trim()).map_err(write)?;
        Ok(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("agentid-revocations-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn added_revocations_load_back_in_order() {
        let d = dir("roundtrip");
        let r = Revocations::new(&d);
        assert!(r.load().unwrap().is_empty(), "no file: no revocations");
        let a = r.add("openai:3f9a0c1d2e4b").unwrap();
        let b = r.add(" 0123456789abCDEF ").unwrap();
        assert_eq!(a.hex(), "3f9a0c1d2e4b");
        assert_eq!(b.hex(), "0123456789abcdef");
        assert_eq!(r.load().unwrap(), vec![a, b]);
        assert_eq!(
            std::fs::read_to_string(r.path()).unwrap(),
            "openai:3f9a0c1d2e4b\n0123456789abCDEF\n"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_invalid_prefix_is_refused_and_not_recorded() {
        let d = dir("invalid");
        let r = Revocations::new(&d);
        for bad in ["openai:3f9a", "nope:3f9a0c1d2e4b", "3f9a0c1d2e4z"] {
            let e = r.add(bad).unwrap_err();
            assert!(matches!(e, RevocationError::Parse { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
        assert!(!r.path().exists());
        // A hand-edited bad line is skipped, the good ones still load.
        std::fs::write(r.path(), "garbage\nopenai:3f9a0c1d2e4b\n\n").unwrap();
        assert_eq!(r.load().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unwritable_state_dir_is_a_typed_error() {
        let r = Revocations::new(Path::new("/nonexistent/agentid-state"));
        assert!(matches!(
            r.add("openai:3f9a0c1d2e4b"),
            Err(RevocationError::Write { .. })
        ));
    }
}
