//! One ES256 signing key per live session; the JWT bundle lists the public keys of live
//! sessions only. A session's end retires its key: it leaves the bundle (every
//! `FetchJWTBundles` stream is sent the new set), validation refuses its tokens, and the
//! public half is kept to recognise the tokens later (credential scanning).
//!
//! Keys live in memory only (never on disk): a daemon restart invalidates every token.
use std::collections::{BTreeMap, HashMap};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use p256::{ecdsa::SigningKey, pkcs8::EncodePrivateKey as _};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no randomness from the kernel: {0}")]
    Random(std::io::Error),
    #[error("encoding the signing key: {0}")]
    Encode(String),
}

/// A session's key pair: the private half signs, the public half verifies and is published.
pub struct SessionKey {
    pub kid: String,
    pub agent: String,
    pub session: String,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// The published JWK (public only).
    jwk: serde_json::Value,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey")
            .field("kid", &self.kid)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// A key whose session ended: verifies (to recognise its tokens), signs nothing.
#[derive(Debug)]
pub struct RetiredKey {
    pub agent: String,
    pub session: String,
    pub decoding: DecodingKey,
}

/// Fills `buf` from the kernel's CSPRNG.
pub(crate) fn random(buf: &mut [u8]) -> Result<(), KeyError> {
    crate::sys::fill_random(buf).map_err(KeyError::Random)
}

impl SessionKey {
    pub fn generate(agent: &str, session: &str) -> Result<Self, KeyError> {
        let signing = loop {
            let mut seed = zeroize::Zeroizing::new([0u8; 32]);
            random(seed.as_mut())?;
            // A scalar ≥ the group order (probability ~2^-32) is refused: draw again.
            if let Ok(k) = SigningKey::from_slice(seed.as_ref()) {
                break k;
            }
        };
        let der = signing
            .to_pkcs8_der()
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        let encoding = EncodingKey::from_ec_der(der.as_bytes());
        let point = signing.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(KeyError::Encode("identity point".into()));
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let decoding =
            DecodingKey::from_ec_components(&x, &y).map_err(|e| KeyError::Encode(e.to_string()))?;
        // The key id names the key, not the session: a hash of the public key.
        let kid = hex::encode(&Sha256::digest(point.as_bytes())[..12]);
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "use": "jwt-svid", "alg": "ES256",
        });
        Ok(Self {
            kid,
            agent: agent.to_owned(),
            session: session.to_owned(),
            encoding,
            decoding,
            jwk,
        })
    }
}

/// Live and retired keys, by session and by key id.
#[derive(Debug, Default)]
pub struct KeyRing {
    /// Session → its key.
    live: BTreeMap<String, SessionKey>,
    /// Key id → the retired key.
    retired: HashMap<String, RetiredKey>,
    /// Bumped on every change of the bundle (`spiffe_sequence`).
    sequence: u64,
}

/// What a key id says about a token's origin.
#[derive(Debug, Clone, Copy)]
pub enum KeyState<'a> {
    Live(&'a SessionKey),
    Retired(&'a RetiredKey),
}

impl KeyRing {
    /// The session's key, made on first use.
    pub fn key_for(&mut self, agent: &str, session: &str) -> Result<&SessionKey, KeyError> {
        if !self.live.contains_key(session) {
            let key = SessionKey::generate(agent, session)?;
            self.live.insert(session.to_owned(), key);
            self.sequence += 1;
        }
        self.live
            .get(session)
            .ok_or_else(|| KeyError::Encode("key vanished".into()))
    }

    pub fn find(&self, kid: &str) -> Option<KeyState<'_>> {
        self.live
            .values()
            .find(|k| k.kid == kid)
            .map(KeyState::Live)
            .or_else(|| self.retired.get(kid).map(KeyState::Retired))
    }

    /// Retires the keys of sessions not in `alive`; returns the sessions retired.
    pub fn retire_except(&mut self, alive: &dyn Fn(&str) -> bool) -> Vec<String> {
        let ended: Vec<String> = self.live.keys().filter(|s| !alive(s)).cloned().collect();
        for session in &ended {
            if let Some(key) = self.live.remove(session) {
                let SessionKey {
                    kid,
                    agent,
                    session,
                    decoding,
                    ..
                } = key;
                self.retired.insert(
                    kid,
                    RetiredKey {
                        agent,
                        session,
                        decoding,
                    },
                );
            }
        }
        if !ended.is_empty() {
            self.sequence += 1;
        }
        ended
    }

    pub fn is_live(&self, session: &str) -> bool {
        self.live.contains_key(session)
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    pub fn retired_count(&self) -> usize {
        self.retired.len()
    }

    /// Trust domains of the live keys.
    pub fn trust_domains(&self) -> Vec<String> {
        self.live
            .values()
            .map(|k| super::trust_domain(&k.agent))
            .collect()
    }

    /// The JWT bundle of trust domain `td`: a JWKS with its live sessions' public keys.
    pub fn bundle(&self, td: &str) -> Vec<u8> {
        let keys: Vec<&serde_json::Value> = self
            .live
            .values()
            .filter(|k| super::trust_domain(&k.agent) == td)
            .map(|k| &k.jwk)
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "keys": keys,
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": 1,
        }))
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_key_leaves_the_bundle_but_is_still_known() {
        let mut ring = KeyRing::default();
        let kid = ring
            .key_for("spiffe://t/agent/a", "a/1-2")
            .unwrap()
            .kid
            .clone();
        assert!(
            String::from_utf8(ring.bundle("spiffe://t"))
                .unwrap()
                .contains(&kid)
        );
        assert_eq!(ring.retire_except(&|_| false), ["a/1-2"]);
        assert!(
            !String::from_utf8(ring.bundle("spiffe://t"))
                .unwrap()
                .contains(&kid)
        );
        assert!(matches!(ring.find(&kid), Some(KeyState::Retired(_))));
    }
}
