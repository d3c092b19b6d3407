//! agentid's own tokens among the credentials: the issuer ([`crate::issuer`]) recognises
//! the JWT-SVIDs it signed at the point of detection, while the value is still in hand, and
//! what travels on is who the token was minted for — never the token.
//!
//! Detection calls the issuer through [`TokenIssuer`] (a trait, so that `credentials` does
//! not depend on the issuer and runs without one: `agentid trace`, tests).
use std::cell::RefCell;

use serde::Serialize;

use super::{CredKind, Fingerprint, FingerprintKey, Observation};

/// Who an agentid-issued token was minted for, and whether that session still lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TokenOrigin {
    pub jti: String,
    pub kid: String,
    /// The SPIFFE ID it names (`sub`): the agent whose session it was minted for.
    pub agent: String,
    /// That session (`sid`).
    pub session: String,
    /// The chain the minting session acted for (`agentid.acting_for`), oldest first.
    pub acting_for: Vec<String>,
    /// Seconds since the epoch.
    pub exp: u64,
    /// Whether the session's key was still live when the token was seen.
    pub session_live: bool,
}

/// The issuer, as credential detection asks it.
pub trait TokenIssuer: std::fmt::Debug + Send + Sync {
    /// `Some` when `token` (fingerprinted as `fp`) carries a signature of one of the
    /// issuer's session keys, live or retired.
    fn recognise(&self, token: &[u8], fp: &Fingerprint) -> Option<TokenOrigin>;

    /// Whether `session`'s key is still live (a cached finding is judged again by it).
    fn session_live(&self, session: &str) -> bool;
}

/// The fingerprint key and the issuer, as every detection function takes them; the
/// origins of the tokens recognised in one scan are gathered here and attached to that
/// scan's observations at its end ([`Keys::attach`]).
pub(super) struct Keys<'a> {
    key: &'a FingerprintKey,
    issuer: Option<&'a dyn TokenIssuer>,
    origins: RefCell<Vec<([u8; 32], TokenOrigin)>>,
}

impl<'a> Keys<'a> {
    pub(super) fn new(key: &'a FingerprintKey, issuer: Option<&'a dyn TokenIssuer>) -> Self {
        Self {
            key,
            issuer,
            origins: RefCell::new(Vec::new()),
        }
    }

    /// The value's fingerprint; a JWT is also shown to the issuer.
    pub(super) fn fingerprint(&self, kind: CredKind, value: &[u8]) -> Fingerprint {
        let fp = self.key.fingerprint(kind, value);
        let value = value.trim_ascii();
        // `eyJ`: `{"` in base64url, as every JWS starts; whatever kind a name gave it.
        if let Some(issuer) = self.issuer
            && value.starts_with(b"eyJ")
            && let Some(origin) = issuer.recognise(value, &fp)
        {
            self.origins.borrow_mut().push((fp.hmac, origin));
        }
        fp
    }

    /// Marks each observation of a recognised token with its origin.
    pub(super) fn attach(&self, observations: &mut [Observation]) {
        let origins = self.origins.borrow();
        if origins.is_empty() {
            return;
        }
        for o in observations {
            if let Some((_, origin)) = origins.iter().find(|(h, _)| *h == o.fingerprint.hmac) {
                o.issued = Some(Box::new(origin.clone()));
            }
        }
    }
}
