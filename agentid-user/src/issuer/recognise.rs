//! The issuer as credential detection asks it ([`TokenIssuer`]): is this token one of ours,
//! and minted for whom? A token is fingerprinted when issued (under the credential key,
//! like any credential) and found again by that fingerprint, without a signature check.
//! Bytes not known that way — a copy re-encoded, or its signature's `s` replaced by
//! `n − s`, which verifies all the same — are checked against the session keys, live and
//! retired, so a token cannot be hidden by rewriting it into another valid form.
use super::{
    Issuer,
    tokens::{self, Claims},
};
use crate::credentials::{CredKind, Fingerprint, TokenIssuer, TokenOrigin};

/// Tokens remembered by fingerprint before the map starts again (each then costs one
/// signature check when next seen).
const KNOWN_MAX: usize = 16_384;

impl Issuer {
    /// Remembers a token just issued; returns its fingerprint.
    pub(super) fn remember(&self, token: &str, claims: &Claims, kid: &str) -> Fingerprint {
        let fp = self
            .fingerprints
            .fingerprint(CredKind::Jwt, token.as_bytes());
        self.learn(fp.hmac, origin(claims, kid, true));
        fp
    }

    fn learn(&self, hmac: [u8; 32], origin: TokenOrigin) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= KNOWN_MAX {
                known.clear();
            }
            known.insert(hmac, origin);
        }
    }
}

fn origin(claims: &Claims, kid: &str, session_live: bool) -> TokenOrigin {
    TokenOrigin {
        jti: claims.jti.clone(),
        kid: kid.to_owned(),
        agent: claims.sub.clone(),
        session: claims.sid.clone(),
        acting_for: claims.acting_for.clone(),
        exp: claims.exp,
        session_live,
    }
}

impl TokenIssuer for Issuer {
    fn recognise(&self, token: &[u8], fp: &Fingerprint) -> Option<TokenOrigin> {
        let ring = self.keys.lock().ok()?;
        let known = self.known.lock().ok()?.get(&fp.hmac).cloned();
        if let Some(mut o) = known {
            o.session_live = ring.is_live(&o.session);
            return Some(o);
        }
        let r = tokens::recognise(&ring, std::str::from_utf8(token).ok()?)?;
        drop(ring);
        let o = origin(&r.claims, &r.kid, r.session_live);
        self.learn(fp.hmac, o.clone());
        Some(o)
    }

    fn session_live(&self, session: &str) -> bool {
        self.keys.lock().is_ok_and(|r| r.is_live(session))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

    use super::*;
    use crate::{credentials::FingerprintKey, issuer::tokens::Subject};

    fn issuer() -> Issuer {
        let key = FingerprintKey::from_fleet_key(&"ab".repeat(32)).unwrap();
        Issuer::new(&crate::config::Issuer::default(), key)
    }

    fn mint(issuer: &Issuer) -> tokens::Minted {
        let subject = Subject {
            agent: "spiffe://t.example/agent/a".into(),
            session: "a/10-20".into(),
            acting_for: vec!["spiffe://t.example/agent/boss".into()],
        };
        let mut ring = issuer.keys.lock().unwrap();
        tokens::mint(
            &mut ring,
            &subject,
            "db",
            SystemTime::now(),
            Duration::from_mins(5),
        )
        .unwrap()
    }

    /// The same signature with `s` replaced by `n − s`: another string, the same token.
    fn malleated(token: &str) -> String {
        use p256::elliptic_curve::PrimeField as _;
        let (signed, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let mut s = [0u8; 32];
        s.copy_from_slice(&sig[32..]);
        let s = Option::<p256::Scalar>::from(p256::Scalar::from_repr(s.into())).unwrap();
        let mut flipped = sig[..32].to_vec();
        flipped.extend_from_slice(&(-s).to_repr());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(flipped))
    }

    #[test]
    fn its_tokens_are_known_by_fingerprint_or_signature_and_others_not() {
        let issuer = issuer();
        let m = mint(&issuer);
        let fp = issuer.remember(&m.token, &m.claims, &m.kid);
        let scan_key = FingerprintKey::from_fleet_key(&"ab".repeat(32)).unwrap();
        // The scanner's fingerprint under the same key is the issuer's.
        assert_eq!(
            scan_key.fingerprint(CredKind::Jwt, m.token.as_bytes()).hmac,
            fp.hmac
        );
        let o = issuer.recognise(m.token.as_bytes(), &fp).unwrap();
        assert_eq!(
            (o.jti.as_str(), o.session.as_str(), o.session_live),
            (m.claims.jti.as_str(), "a/10-20", true)
        );
        assert_eq!(o.acting_for, ["spiffe://t.example/agent/boss"]);

        // Rewritten into another valid form: not known by its bytes, still recognised.
        let other = malleated(&m.token);
        assert_ne!(other, m.token);
        let other_fp = scan_key.fingerprint(CredKind::Jwt, other.as_bytes());
        let o = issuer.recognise(other.as_bytes(), &other_fp).unwrap();
        assert_eq!(o.jti, m.claims.jti);

        // A token another issuer signed, and a forged signature, are not ours.
        let foreign = mint(&self::issuer());
        let ffp = scan_key.fingerprint(CredKind::Jwt, foreign.token.as_bytes());
        assert!(issuer.recognise(foreign.token.as_bytes(), &ffp).is_none());
        let (signed, _) = m.token.rsplit_once('.').unwrap();
        let (_, foreign_sig) = foreign.token.rsplit_once('.').unwrap();
        let forged = format!("{signed}.{foreign_sig}");
        let gfp = scan_key.fingerprint(CredKind::Jwt, forged.as_bytes());
        assert!(issuer.recognise(forged.as_bytes(), &gfp).is_none());

        // The session ends: still recognised, as ended.
        issuer.keys.lock().unwrap().retire_except(&|_| false);
        assert!(
            !issuer
                .recognise(m.token.as_bytes(), &fp)
                .unwrap()
                .session_live
        );
        assert!(!issuer.session_live("a/10-20"));
    }
}
