//! Credentials in HTTP request headers, as an agent presents them to a service.
//!
//! Each credential value is fingerprinted exactly as the same value in an environment
//! variable would be (the scheme stripped, nothing else changed), so agent A's
//! `OPENAI_API_KEY` and agent B's `Authorization: Bearer` header are one credential.
use base64::Engine as _;
use zeroize::Zeroizing;

use super::{
    CredKind,
    detect::{Found, classify, embedded, non_trivial},
    issued::Keys,
};

/// Headers whose whole value (after an auth scheme) is the credential.
const KEY_HEADERS: [&str; 3] = ["x-api-key", "api-key", "x-goog-api-key"];
const AUTH_HEADERS: [&str; 2] = ["authorization", "proxy-authorization"];

/// The credentials in one `name: value` header field; the header's lowercase name goes
/// with them. Fields without a credential give nothing.
pub(super) fn field(key: &Keys<'_>, entry: &[u8]) -> Option<(String, Found)> {
    let colon = entry.iter().position(|&b| b == b':')?;
    let name = String::from_utf8_lossy(entry[..colon].trim_ascii()).to_ascii_lowercase();
    let value = entry[colon + 1..].trim_ascii();
    let mut found = Found::default();
    if AUTH_HEADERS.contains(&name.as_str()) {
        authorization(key, value, &mut found);
    } else if KEY_HEADERS.contains(&name.as_str()) {
        token(key, value, &mut found);
    } else {
        // Any other header: a secret-looking name (`X-Auth-Token`) or a token in a known
        // format anywhere in the value.
        found.merge(embedded(key, entry));
    }
    (!found.is_empty()).then_some((name, found))
}

/// A value that is a credential as a whole.
fn token(key: &Keys<'_>, v: &[u8], found: &mut Found) {
    if let Some(kind) = classify(v) {
        found.add(key, kind, v);
    } else if non_trivial(v, CredKind::Generic) {
        found.add(key, CredKind::Generic, v);
    }
}

/// `<scheme> <credentials>`: Bearer/token/other schemes give their credential; Basic gives
/// the password of `user:password` (the user is not secret); AWS Signature V4 gives only
/// its access key id (the signature is not the secret and changes per request).
fn authorization(key: &Keys<'_>, value: &[u8], found: &mut Found) {
    let (scheme, rest) = match value.iter().position(u8::is_ascii_whitespace) {
        Some(sp) => (&value[..sp], value[sp..].trim_ascii()),
        None => (&b""[..], value),
    };
    if scheme.eq_ignore_ascii_case(b"basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return;
        };
        let decoded = Zeroizing::new(decoded);
        if let Some(colon) = decoded.iter().position(|&b| b == b':') {
            let password = &decoded[colon + 1..];
            if let Some(kind) = classify(password) {
                found.add(key, kind, password);
            } else if non_trivial(password, CredKind::Password) {
                found.add(key, CredKind::Password, password);
            }
        }
        return;
    }
    if scheme.starts_with(b"AWS4-") {
        for piece in rest.split(|&c| !c.is_ascii_alphanumeric()) {
            if classify(piece) == Some(CredKind::Aws) {
                found.add(key, CredKind::Aws, piece);
            }
        }
        return;
    }
    token(key, rest, found);
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::credentials::FingerprintKey;

    fn key() -> FingerprintKey {
        FingerprintKey::from_fleet_key(&"cd".repeat(32)).expect("key")
    }

    fn fps(entry: &[u8]) -> Vec<(CredKind, [u8; 32])> {
        let key = key();
        field(&Keys::new(&key, None), entry)
            .map(|(_, f)| {
                f.into_vec()
                    .into_iter()
                    .map(|(k, fp)| (k, fp.hmac))
                    .collect()
            })
            .unwrap_or_default()
    }

    const OPENAI: &[u8] = b"sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0f";

    #[test]
    fn schemes_stripped_same_fingerprint_as_the_bare_value() {
        let bare = key().fingerprint(CredKind::Openai, OPENAI).hmac;
        let bearer = [&b"Authorization: Bearer "[..], OPENAI].concat();
        assert_eq!(fps(&bearer), [(CredKind::Openai, bare)]);
        let lower = [&b"authorization:bearer\t"[..], OPENAI].concat();
        assert_eq!(fps(&lower), [(CredKind::Openai, bare)]);
        let xkey = [&b"X-Api-Key: "[..], OPENAI].concat();
        assert_eq!(fps(&xkey), [(CredKind::Openai, bare)]);
        let other = [&b"X-Custom: prefix "[..], OPENAI, b" suffix"].concat();
        assert_eq!(fps(&other), [(CredKind::Openai, bare)]);
    }

    #[test]
    fn basic_gives_the_password() {
        let b64 =
            base64::engine::general_purpose::STANDARD.encode(b"x-access-token:hunter2hunter2");
        let entry = format!("Proxy-Authorization: Basic {b64}");
        let pw = key()
            .fingerprint(CredKind::Password, b"hunter2hunter2")
            .hmac;
        assert_eq!(fps(entry.as_bytes()), [(CredKind::Password, pw)]);
    }

    #[test]
    fn sigv4_gives_the_access_key_id_only() {
        let entry = b"Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20250101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=abcdef0123456789";
        let id = key()
            .fingerprint(CredKind::Aws, b"AKIAIOSFODNN7EXAMPLE")
            .hmac;
        assert_eq!(fps(entry), [(CredKind::Aws, id)]);
    }

    #[test]
    fn ordinary_headers_give_nothing() {
        assert!(fps(b"Host: api.openai.com").is_empty());
        assert!(fps(b"User-Agent: curl/7.88.1").is_empty());
        assert!(fps(b"Content-Type: application/json").is_empty());
        assert!(fps(b"Authorization: Bearer").is_empty());
    }
}
