//! JWT-SVIDs: what a token says (claims), minting with a session's key, and verifying one
//! agentid issued. The chain is a private claim, not RFC 8693 `act`: in a JWT-SVID `sub`
//! must be the holder, and `act` would say the opposite of what `acting_for` means.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::keys::{KeyError, KeyRing, KeyState, SessionKey};

/// The private claim carrying the delegation chain (collision-resistant name).
pub const ACTING_FOR_CLAIM: &str = "agentid.acting_for";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    /// The session the token was minted for (`name/pid-starttime`).
    pub sid: String,
    /// Agents this session acts for, oldest first.
    #[serde(rename = "agentid.acting_for", default)]
    pub acting_for: Vec<String>,
}

/// What a caller is, as attested.
#[derive(Debug, Clone)]
pub struct Subject {
    pub agent: String,
    pub session: String,
    pub acting_for: Vec<String>,
}

/// A minted token and its (non-secret) record.
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    pub claims: Claims,
    pub kid: String,
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Signs a token for `subject` and `audience`, valid for `ttl`.
///
/// `exp` is `iat + ttl` and nothing earlier, although the issue asks for `min(ttl, session
/// end)`: a session ends when its root process exits, which nothing knows in advance, and
/// no registration declares a session deadline. What bounds a token by its session is the
/// session's key instead: retired when the root exits, it leaves the bundle at once, so a
/// validator following the bundle (or asking `ValidateJWTSVID`) refuses the token from
/// then on; only a copy validated offline against a cached bundle lives on, until `exp`.
pub fn mint(
    ring: &mut KeyRing,
    subject: &Subject,
    audience: &str,
    now: SystemTime,
    ttl: Duration,
) -> Result<Minted, KeyError> {
    let key: &SessionKey = ring.key_for(&subject.agent, &subject.session)?;
    let mut jti = [0u8; 16];
    super::keys::random(&mut jti)?;
    let claims = Claims {
        sub: subject.agent.clone(),
        aud: vec![audience.to_owned()],
        exp: unix(now + ttl),
        iat: unix(now),
        jti: URL_SAFE_NO_PAD.encode(jti),
        sid: subject.session.clone(),
        acting_for: subject.acting_for.clone(),
    };
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some("JWT".into());
    header.kid = Some(key.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, &key.encoding)
        .map_err(|e| KeyError::Encode(e.to_string()))?;
    Ok(Minted {
        token,
        claims,
        kid: key.kid.clone(),
    })
}

/// A token agentid signed: its claims, its key and whether its session's key is still live.
#[derive(Debug)]
pub struct Recognised {
    pub claims: Claims,
    pub kid: String,
    pub session_live: bool,
}

/// Verifies `token` against agentid's keys (live or retired), signature only: expiry and
/// audience are the caller's questions. `None`: not a token agentid signed.
pub fn recognise(ring: &KeyRing, token: &str) -> Option<Recognised> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    if header.alg != Algorithm::ES256 {
        return None;
    }
    let kid = header.kid?;
    let (decoding, session_live) = match ring.find(&kid)? {
        KeyState::Live(k) => (&k.decoding, true),
        KeyState::Retired(k) => (&k.decoding, false),
    };
    let data = jsonwebtoken::decode::<Claims>(token, decoding, &signature_only()).ok()?;
    Some(Recognised {
        claims: data.claims,
        kid,
        session_live,
    })
}

/// ES256, the signature checked and nothing else: expiry, audience and the session are
/// judged by the callers, each its own way.
fn signature_only() -> Validation {
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    v
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidateError {
    #[error("not a JWT-SVID issued here")]
    Unknown,
    #[error("the session it was issued for has ended")]
    SessionEnded,
    #[error("expired")]
    Expired,
    #[error("audience mismatch")]
    Audience,
}

/// `ValidateJWTSVID`: signed by a *live* session's key, unexpired, for `audience`.
pub fn validate(
    ring: &KeyRing,
    token: &str,
    audience: &str,
    now: SystemTime,
) -> Result<Claims, ValidateError> {
    let r = recognise(ring, token).ok_or(ValidateError::Unknown)?;
    if !r.session_live {
        return Err(ValidateError::SessionEnded);
    }
    if r.claims.exp <= unix(now) {
        return Err(ValidateError::Expired);
    }
    if !r.claims.aud.iter().any(|a| a == audience) {
        return Err(ValidateError::Audience);
    }
    Ok(r.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            agent: "spiffe://t.example/agent/a".into(),
            session: "a/10-20".into(),
            acting_for: vec!["spiffe://t.example/agent/boss".into()],
        }
    }

    #[test]
    fn minted_tokens_validate_until_the_session_ends() {
        let mut ring = KeyRing::default();
        let now = SystemTime::now();
        let m = mint(&mut ring, &subject(), "db", now, Duration::from_mins(5)).unwrap();
        assert_eq!(m.claims.exp - m.claims.iat, 300);
        let c = validate(&ring, &m.token, "db", now).unwrap();
        assert_eq!(c.sub, "spiffe://t.example/agent/a");
        assert_eq!(c.acting_for, ["spiffe://t.example/agent/boss"]);
        assert_eq!(
            validate(&ring, &m.token, "other", now),
            Err(ValidateError::Audience)
        );
        ring.retire_except(&|_| false);
        assert_eq!(
            validate(&ring, &m.token, "db", now),
            Err(ValidateError::SessionEnded)
        );
        assert!(!recognise(&ring, &m.token).unwrap().session_live);
    }

    #[test]
    fn a_foreign_token_is_unknown() {
        let mut ring = KeyRing::default();
        let m = mint(
            &mut ring,
            &subject(),
            "db",
            SystemTime::now(),
            Duration::from_mins(5),
        )
        .unwrap();
        assert_eq!(recognise(&ring, &m.token).unwrap().kid, m.kid);
        let other = KeyRing::default();
        assert!(recognise(&other, &m.token).is_none());
    }
}
