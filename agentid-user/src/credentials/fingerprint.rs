//! Fingerprints and their text forms.
use std::{fmt, str::FromStr};

use serde::{Serialize, Serializer};

use super::CredKind;

/// Hex digits shown by `Display`: 48 bits tell credentials on one host apart; the full
/// HMAC stays available through [`Fingerprint::full_hex`].
pub(crate) const SHORT_HEX: usize = 12;

/// A keyed fingerprint of a credential: HMAC-SHA-256 of the value under the host or fleet
/// key. `kind` is a label; two fingerprints name the same credential when `hmac` is equal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint {
    pub kind: CredKind,
    pub hmac: [u8; 32],
}

impl Fingerprint {
    /// All 64 hex digits of the HMAC.
    pub fn full_hex(&self) -> String {
        hex::encode(self.hmac)
    }

    /// Whether this and `other` are the same credential (the kind is ignored).
    pub fn same_credential(&self, other: &Self) -> bool {
        self.hmac == other.hmac
    }
}

/// `kind:first-12-hex`, e.g. `openai:3f9a0c1d2e4b`.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, &self.full_hex()[..SHORT_HEX])
    }
}

// The HMAC is not secret, but the short form is what people compare.
impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The full form `kind:<64 hex>` (as built from `kind` and [`Fingerprint::full_hex`]).
/// The short display form does not carry the whole HMAC: parse it as a
/// [`FingerprintPrefix`].
impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let prefix: FingerprintPrefix = s.parse()?;
        let kind = prefix.kind.ok_or(ParseFingerprintError::MissingKind)?;
        let mut hmac = [0u8; 32];
        hex::decode_to_slice(&prefix.hex, &mut hmac).map_err(|_| ParseFingerprintError::NotFull)?;
        Ok(Self { kind, hmac })
    }
}

/// What a user types to name a credential (`agentid credentials revoke openai:3f9a0c1d2e4b`):
/// an optional `kind:` and at least 12 hex digits of the HMAC. It matches every
/// fingerprint whose HMAC starts with those digits, whatever its kind label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FingerprintPrefix {
    pub kind: Option<CredKind>,
    /// Lowercase hex digits, `SHORT_HEX..=64` of them.
    hex: String,
}

impl FingerprintPrefix {
    pub fn hex(&self) -> &str {
        &self.hex
    }

    pub fn matches(&self, fp: &Fingerprint) -> bool {
        fp.full_hex().starts_with(&self.hex)
    }
}

impl fmt::Display for FingerprintPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(kind) => write!(f, "{kind}:{}", self.hex),
            None => f.write_str(&self.hex),
        }
    }
}

impl Serialize for FingerprintPrefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for FingerprintPrefix {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (kind, hex) = match s.split_once(':') {
            Some((kind, hex)) => (
                Some(
                    kind.parse()
                        .map_err(|()| ParseFingerprintError::UnknownKind)?,
                ),
                hex,
            ),
            None => (None, s),
        };
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseFingerprintError::NotHex);
        }
        if !(SHORT_HEX..=64).contains(&hex.len()) {
            return Err(ParseFingerprintError::Length(hex.len()));
        }
        Ok(Self {
            kind,
            hex: hex.to_ascii_lowercase(),
        })
    }
}

/// Why a fingerprint did not parse. The input is never echoed: someone may paste a secret
/// where a fingerprint was expected, and errors end up in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseFingerprintError {
    #[error("unknown credential kind before ':'")]
    UnknownKind,
    #[error("a fingerprint's HMAC part must be hex digits")]
    NotHex,
    #[error("a fingerprint needs {SHORT_HEX} to 64 hex digits, got {0}")]
    Length(usize),
    #[error("a full fingerprint needs a kind: kind:<64 hex digits>")]
    MissingKind,
    #[error("a full fingerprint needs all 64 hex digits")]
    NotFull,
}
