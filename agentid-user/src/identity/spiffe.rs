//! SPIFFE IDs, validated per the SPIFFE ID specification (`SPIFFE-ID.md`).
//!
//! Validation is strict on purpose: an agent id ends up in every event and in
//! policy references (`accepts_delegation_from`, `shared_with`), and two spellings of
//! the same identity (`Example.org` vs `example.org`, `/a/./b` vs `/a/b`) would make
//! those references silently miss.
use std::fmt;

use serde::{Serialize, Serializer};

/// The spec caps a SPIFFE ID at 2048 bytes and a trust domain at 255.
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("must start with \"spiffe://\"")]
    Scheme,
    #[error("trust domain is missing")]
    EmptyTrustDomain,
    #[error("trust domain must be lowercase")]
    UppercaseTrustDomain,
    #[error("a port is not allowed in the trust domain")]
    Port,
    #[error("user info is not allowed in the trust domain")]
    UserInfo,
    #[error("trust domain contains {0:?}; only a-z, 0-9, '.', '-' and '_' are allowed")]
    TrustDomainChar(char),
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("a query is not allowed")]
    Query,
    #[error("a fragment is not allowed")]
    Fragment,
    #[error("path segments must not be empty")]
    EmptySegment,
    #[error("path must not end with '/'")]
    TrailingSlash,
    #[error("path segments must not be '.' or '..'")]
    DotSegment,
    #[error("path contains {0:?}; only a-z, A-Z, 0-9, '.', '-' and '_' are allowed")]
    PathChar(char),
    #[error("longer than {MAX_ID_LEN} bytes")]
    TooLong,
}

/// A validated SPIFFE ID such as `spiffe://example.org/agent/research-bot`.
///
/// Stored as the original string (which, once valid, is already canonical: the spec
/// allows no alternative spellings), so comparing ids is comparing strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpiffeId {
    raw: String,
    /// Byte length of `spiffe://<trust domain>`: the path starts here.
    path_start: usize,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        // Query and fragment first: '?' or '#' in the trust domain part is also a query.
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        let (td, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(Self {
            raw: s.to_owned(),
            path_start: SCHEME.len() + td.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn trust_domain(&self) -> &str {
        &self.raw[SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/`, or empty for a trust domain's own id.
    pub fn path(&self) -> &str {
        &self.raw[self.path_start..]
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.contains('@') {
        return Err(SpiffeIdError::UserInfo);
    }
    if td.contains(':') {
        return Err(SpiffeIdError::Port);
    }
    if td.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(SpiffeIdError::UppercaseTrustDomain);
    }
    if let Some(c) = td
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(SpiffeIdError::TrustDomainChar(c));
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    let Some(segments) = path.strip_prefix('/') else {
        return Ok(()); // empty path
    };
    let mut it = segments.split('/').peekable();
    while let Some(seg) = it.next() {
        if seg.is_empty() {
            return Err(if it.peek().is_none() {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        if seg == "." || seg == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(c) = seg
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::PathChar(c));
        }
    }
    Ok(())
}

// By the string alone (`path_start` follows from it), so that maps keyed by id can be
// searched with a `&str` (`Borrow<str>`) without parsing it again on every event.
impl std::hash::Hash for SpiffeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.raw.hash(state);
    }
}

impl std::borrow::Borrow<str> for SpiffeId {
    fn borrow(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::{SpiffeId, SpiffeIdError as E};

    #[test]
    fn accepts_valid_ids() {
        for (s, td, path) in [
            (
                "spiffe://example.org/agent/research-bot",
                "example.org",
                "/agent/research-bot",
            ),
            ("spiffe://example.org", "example.org", ""),
            (
                "spiffe://my_td-1.example/A.b-c_D/9",
                "my_td-1.example",
                "/A.b-c_D/9",
            ),
            ("spiffe://x/...", "x", "/..."),
        ] {
            let id = SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.as_str(), s);
            assert_eq!(id.trust_domain(), td);
            assert_eq!(id.path(), path);
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn rejects_invalid_ids() {
        for (s, want) in [
            ("https://example.org/a", E::Scheme),
            ("SPIFFE://example.org/a", E::Scheme),
            ("spiffe:/example.org/a", E::Scheme),
            ("spiffe:///a", E::EmptyTrustDomain),
            ("spiffe://", E::EmptyTrustDomain),
            ("spiffe://Example.org/x", E::UppercaseTrustDomain),
            ("spiffe://example.org:8443/a", E::Port),
            ("spiffe://user@example.org/a", E::UserInfo),
            ("spiffe://exa mple.org/a", E::TrustDomainChar(' ')),
            ("spiffe://example.org/a?x=1", E::Query),
            ("spiffe://example.org/a#frag", E::Fragment),
            ("spiffe://example.org/a//b", E::EmptySegment),
            ("spiffe://example.org/a/", E::TrailingSlash),
            ("spiffe://example.org/", E::TrailingSlash),
            ("spiffe://example.org/a/./b", E::DotSegment),
            ("spiffe://example.org/a/..", E::DotSegment),
            ("spiffe://example.org/a%20b", E::PathChar('%')),
            ("spiffe://example.org/caf\u{e9}", E::PathChar('\u{e9}')),
        ] {
            assert_eq!(SpiffeId::parse(s), Err(want), "{s}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert_eq!(SpiffeId::parse(&long), Err(E::TooLong));
        let long_td = format!("spiffe://{}/a", "a".repeat(256));
        assert_eq!(SpiffeId::parse(&long_td), Err(E::TrustDomainTooLong));
    }

    #[test]
    fn error_messages_read_well() {
        assert_eq!(
            SpiffeId::parse("spiffe://Example.org/x")
                .unwrap_err()
                .to_string(),
            "trust domain must be lowercase"
        );
    }
}
