//! Recognising credentials: token formats (prefix, length and charset, no regex engine),
//! secret-looking names, and credentials embedded in larger strings (URLs, headers).
//!
//! Every function that finds a secret fingerprints it on the spot and returns only the
//! fingerprint; slices of the value never leave this module.
use std::{fmt, str::FromStr};

use serde::{Serialize, Serializer};
use zeroize::Zeroizing;

use super::{Fingerprint, issued::Keys};

/// What a credential is, as far as its format or its name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CredKind {
    /// AWS access key id (`AKIA`/`ASIA` + 16 upper-case alphanumerics).
    Aws,
    /// AWS secret access key or session token (known by the variable's name).
    AwsSecret,
    /// GitHub token (`ghp_`, `gho_`, `ghs_`, `ghu_`, `ghr_`, `github_pat_`).
    Github,
    /// GitLab personal access token (`glpat-`).
    Gitlab,
    /// `OpenAI` API key (`sk-`, `sk-proj-`).
    Openai,
    /// Anthropic API key (`sk-ant-`).
    Anthropic,
    /// Slack token (`xoxb-`, `xoxp-`, `xoxa-`, `xoxr-`, `xoxs-`).
    Slack,
    /// Google API key (`AIza` + 35 characters).
    Google,
    /// A JSON Web Token (three base64url parts, a JSON header with `alg`).
    Jwt,
    /// A PEM private key (SSH keys and others).
    PrivateKey,
    /// A password (by name, or the password of a URL).
    Password,
    /// A value that its name says is secret, in no recognised format.
    Generic,
}

impl CredKind {
    pub const ALL: [Self; 12] = [
        Self::Aws,
        Self::AwsSecret,
        Self::Github,
        Self::Gitlab,
        Self::Openai,
        Self::Anthropic,
        Self::Slack,
        Self::Google,
        Self::Jwt,
        Self::PrivateKey,
        Self::Password,
        Self::Generic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::AwsSecret => "aws-secret",
            Self::Github => "github",
            Self::Gitlab => "gitlab",
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Slack => "slack",
            Self::Google => "google",
            Self::Jwt => "jwt",
            Self::PrivateKey => "private-key",
            Self::Password => "password",
            Self::Generic => "generic",
        }
    }

    /// Kinds recognised from the value itself, as opposed to from a name.
    fn is_format(self) -> bool {
        !matches!(self, Self::Password | Self::Generic | Self::AwsSecret)
    }
}

impl fmt::Display for CredKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CredKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}

impl Serialize for CredKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

// ---- token formats ----

fn all(b: &[u8], f: impl Fn(u8) -> bool) -> bool {
    b.iter().all(|&c| f(c))
}

fn b62(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

fn b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// At least two of lower case, upper case and digits. A random base62 string of 20 or more
/// characters has that with overwhelming probability; placeholders (`sk-xxxxxxxx…`) and
/// kebab-case words (`sk-learn-…`) do not.
fn mixed(b: &[u8]) -> bool {
    let lower = b.iter().any(u8::is_ascii_lowercase);
    let upper = b.iter().any(u8::is_ascii_uppercase);
    let digit = b.iter().any(u8::is_ascii_digit);
    u8::from(lower) + u8::from(upper) + u8::from(digit) >= 2
}

fn between(b: &[u8], min: usize, max: usize) -> bool {
    (min..=max).contains(&b.len())
}

/// The kind of `v` when it is, as a whole, a token in a known format.
pub(super) fn classify(v: &[u8]) -> Option<CredKind> {
    // Anthropic keys also start with `sk-`: once `sk-ant-` is seen, only Anthropic applies.
    if let Some(body) = v.strip_prefix(b"sk-ant-") {
        return (between(body, 32, 256) && all(body, b64url) && mixed(body))
            .then_some(CredKind::Anthropic);
    }
    if let Some(body) = v.strip_prefix(b"sk-") {
        return (between(body, 32, 256) && all(body, b64url) && mixed(body))
            .then_some(CredKind::Openai);
    }
    if v.len() == 20 && (v.starts_with(b"AKIA") || v.starts_with(b"ASIA")) {
        let body = &v[4..];
        return all(body, |c| c.is_ascii_uppercase() || c.is_ascii_digit())
            .then_some(CredKind::Aws);
    }
    for prefix in [&b"ghp_"[..], b"gho_", b"ghs_", b"ghu_", b"ghr_"] {
        if let Some(body) = v.strip_prefix(prefix) {
            return (between(body, 36, 251) && all(body, b62) && mixed(body))
                .then_some(CredKind::Github);
        }
    }
    if let Some(body) = v.strip_prefix(b"github_pat_") {
        return (between(body, 70, 244) && all(body, |c| b62(c) || c == b'_') && mixed(body))
            .then_some(CredKind::Github);
    }
    if let Some(body) = v.strip_prefix(b"glpat-") {
        return (between(body, 20, 255) && all(body, |c| b64url(c) || c == b'.') && mixed(body))
            .then_some(CredKind::Gitlab);
    }
    for prefix in [&b"xoxb-"[..], b"xoxp-", b"xoxa-", b"xoxr-", b"xoxs-"] {
        if let Some(body) = v.strip_prefix(prefix) {
            let ok = between(body, 20, 255)
                && all(body, |c| b62(c) || c == b'-')
                && body.iter().any(u8::is_ascii_digit)
                && mixed(body);
            return ok.then_some(CredKind::Slack);
        }
    }
    if let Some(body) = v.strip_prefix(b"AIza") {
        return (body.len() == 35 && all(body, b64url)).then_some(CredKind::Google);
    }
    is_jwt(v).then_some(CredKind::Jwt)
}

fn is_jwt(v: &[u8]) -> bool {
    use base64::Engine;
    // `eyJ` is `{"` in base64url: a cheap filter before splitting and decoding.
    if !v.starts_with(b"eyJ") || v.len() > 16 * 1024 {
        return false;
    }
    let mut parts = v.split(|&c| c == b'.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if [header, payload, signature]
        .iter()
        .any(|p| p.is_empty() || !all(p, b64url))
    {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&decoded)
        .is_ok_and(|h| h.contains_key("alg"))
}

/// An AWS secret access key: 40 base64 characters.
fn is_aws_secret(v: &[u8]) -> bool {
    v.len() == 40 && all(v, |c| b62(c) || c == b'/' || c == b'+') && mixed(v)
}

// ---- names ----

/// Last name components that make a name a *reference* to a secret (a file, a socket, an
/// endpoint) or metadata about one, not the secret itself.
const BENIGN_LAST: &[&str] = &[
    "FILE",
    "FILES",
    "PATH",
    "PATHS",
    "DIR",
    "DIRS",
    "SOCK",
    "SOCKET",
    "URL",
    "URI",
    "ENDPOINT",
    "HOST",
    "PORT",
    "TYPE",
    "ID",
    "NAME",
    "EXPIRY",
    "EXPIRES",
    "EXPIRATION",
    "TTL",
    "TIMEOUT",
    "LENGTH",
    "LEN",
    "SIZE",
    "ENABLED",
    "REGION",
    "FORMAT",
    "MODE",
    "HEADER",
    "COMMAND",
    "CMD",
    "VERSION",
    "ALGORITHM",
    "PROVIDER",
    "HELPER",
    "PROMPT",
    "POLICY",
    "STDIN",
    "FD",
    "FINGERPRINT",
];
/// Whole names that look secret-ish but are not.
const BENIGN_NAMES: &[&str] = &["SSH_AUTH_SOCK", "GPG_AGENT_INFO", "TERM", "KEYTIMEOUT"];
const SECRET_WORDS: &[&str] = &[
    "TOKEN",
    "TOKENS",
    "CREDENTIAL",
    "CREDENTIALS",
    "CREDS",
    "APIKEY",
    "ACCESSTOKEN",
    "AUTHTOKEN",
    "PRIVATEKEY",
];

/// The kind a secret-looking name implies, or `None` for a name that does not look secret.
/// Names are matched by components (split on `_`, `-`, `.`), so `KEYBOARD` or `KEYMAP` never
/// match `KEY`.
pub(super) fn secret_name(name: &[u8]) -> Option<CredKind> {
    let upper = String::from_utf8_lossy(name).to_ascii_uppercase();
    let upper = upper.trim_start_matches('-');
    if BENIGN_NAMES.contains(&upper) || upper.starts_with("XDG_") || upper.starts_with("LC_") {
        return None;
    }
    let comps: Vec<&str> = upper
        .split(['_', '-', '.'])
        .filter(|c| !c.is_empty())
        .collect();
    let (&first, &last) = (comps.first()?, comps.last()?);
    if BENIGN_LAST.contains(&last) || first == "NO" {
        return None;
    }
    let many = comps.len() > 1;
    if upper.contains("PASSWORD")
        || upper.contains("PASSWD")
        || upper.contains("PASSPHRASE")
        || (many && comps.iter().any(|c| matches!(*c, "PWD" | "PASS")))
    {
        return Some(CredKind::Password);
    }
    if matches!(upper, "AWS_SECRET_ACCESS_KEY" | "AWS_SESSION_TOKEN") {
        return Some(CredKind::AwsSecret);
    }
    let secret = comps
        .iter()
        .any(|c| c.starts_with("SECRET") || SECRET_WORDS.contains(c))
        || (many && (last == "KEY" || last == "PAT"))
        // `client-key-data` (kube config): base64 of the private key.
        || (many && last == "DATA" && comps.contains(&"KEY"));
    secret.then_some(CredKind::Generic)
}

/// Whether a value named secret is worth fingerprinting: long enough, not a boolean or
/// placeholder word, not a path or URL (a reference to a secret, not a secret).
pub(super) fn non_trivial(v: &[u8], kind: CredKind) -> bool {
    const WORDS: &[&str] = &[
        "true",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "null",
        "none",
        "nil",
        "undefined",
        "enabled",
        "disabled",
        "required",
        "optional",
        "changeme",
        "redacted",
    ];
    // Passwords are often short; an explicitly named password of 4+ characters counts.
    let min = if kind == CredKind::Password { 4 } else { 8 };
    if v.len() < min {
        return false;
    }
    if WORDS.iter().any(|w| v.eq_ignore_ascii_case(w.as_bytes())) {
        return false;
    }
    if v.iter().all(u8::is_ascii_digit) && v.len() <= 6 {
        return false;
    }
    let pathish = [&b"/"[..], b"~/", b"./", b"../"]
        .iter()
        .any(|p| v.starts_with(p))
        && all(v, |c| b62(c) || b"/._~-".contains(&c));
    let urlish = v.windows(3).any(|w| w == b"://");
    // `${VAR}` / `$VAR`: a reference resolved elsewhere.
    let reference = v.starts_with(b"$");
    !(pathish || urlish || reference)
}

// ---- results ----

/// Findings in one string, at most one per credential (per HMAC), most specific kind kept.
#[derive(Default)]
pub(super) struct Found(Vec<(CredKind, Fingerprint)>);

impl Found {
    pub(super) fn add(&mut self, key: &Keys<'_>, kind: CredKind, value: &[u8]) {
        let fp = key.fingerprint(kind, value);
        if let Some(existing) = self.0.iter_mut().find(|(_, f)| f.same_credential(&fp)) {
            if kind.is_format() && !existing.0.is_format() {
                *existing = (kind, fp);
            }
        } else {
            self.0.push((kind, fp));
        }
    }

    pub(super) fn merge(&mut self, other: Self) {
        for (kind, fp) in other.0 {
            if let Some(existing) = self.0.iter_mut().find(|(_, f)| f.same_credential(&fp)) {
                if kind.is_format() && !existing.0.is_format() {
                    *existing = (kind, fp);
                }
            } else {
                self.0.push((kind, fp));
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn into_vec(self) -> Vec<(CredKind, Fingerprint)> {
        self.0
    }
}

/// `NAME=value` (an environment variable, a line of a `.env` or INI file).
pub(super) fn assignment(key: &Keys<'_>, name: &[u8], value: &[u8]) -> Found {
    let mut found = Found::default();
    let v = value.trim_ascii();
    if v.is_empty() {
        return found;
    }
    if let Some(kind) = classify(v) {
        found.add(key, kind, v);
        return found;
    }
    if let Some(mut kind) = secret_name(name)
        && non_trivial(v, kind)
    {
        if kind == CredKind::AwsSecret
            && name.eq_ignore_ascii_case(b"AWS_SECRET_ACCESS_KEY")
            && !is_aws_secret(v)
        {
            kind = CredKind::Generic;
        }
        found.add(key, kind, v);
        return found;
    }
    embedded(key, v)
}

/// Credentials inside a larger string: URL passwords, `Authorization`/`Bearer` values,
/// `Secret-Header: value`, and tokens in known formats anywhere.
pub(super) fn embedded(key: &Keys<'_>, text: &[u8]) -> Found {
    let mut found = Found::default();
    url_passwords(key, text, &mut found);
    auth_values(key, text, &mut found);
    // `X-Api-Key: value` as one argument (curl -H).
    if let Some(colon) = text.iter().position(|&c| c == b':') {
        let (name, value) = (&text[..colon], text[colon + 1..].trim_ascii());
        if !name.is_empty()
            && all(name, |c| b64url(c) || c == b'.')
            && let Some(kind) = secret_name(name)
            && non_trivial(value, kind)
            && !value.contains(&b' ')
        {
            found.add(key, classify(value).unwrap_or(kind), value);
        }
    }
    // Token charsets (base64url plus `.` for JWTs and GitLab) never include these
    // separators, so splitting on everything else finds tokens inside URLs, JSON, headers.
    for piece in text.split(|&c| !(b64url(c) || c == b'.')) {
        let piece = piece.strip_suffix(b".").unwrap_or(piece);
        if let Some(kind) = classify(piece) {
            found.add(key, kind, piece);
        }
    }
    found
}

/// The password of each `scheme://user:password@host` in `text`, percent-decoded so that
/// it fingerprints like the same password seen undecoded elsewhere.
fn url_passwords(key: &Keys<'_>, text: &[u8], found: &mut Found) {
    let mut rest = text;
    while let Some(at) = rest.windows(3).position(|w| w == b"://") {
        let after = &rest[at + 3..];
        let end = after
            .iter()
            .position(|&c| b"/?# \t\r\n\"'<>".contains(&c))
            .unwrap_or(after.len());
        let authority = &after[..end];
        if let Some(at_sign) = authority.iter().rposition(|&c| c == b'@')
            && let Some(colon) = authority[..at_sign].iter().position(|&c| c == b':')
        {
            let password = percent_decode(&authority[colon + 1..at_sign]);
            if !password.is_empty() && !password.starts_with(b"$") {
                let kind = classify(&password).unwrap_or(CredKind::Password);
                found.add(key, kind, &password);
            }
        }
        rest = &after[end..];
    }
}

fn percent_decode(s: &[u8]) -> Zeroizing<Vec<u8>> {
    // Sized up front: a reallocation would leave an unwiped copy of the secret behind.
    let mut out = Zeroizing::new(Vec::with_capacity(s.len()));
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w.eq_ignore_ascii_case(needle))
        .map(|(i, _)| i)
        .collect()
}

fn word(s: &[u8]) -> (&[u8], &[u8]) {
    let s = s.trim_ascii_start();
    let end = s
        .iter()
        .position(|&c| c.is_ascii_whitespace() || c == b'"' || c == b'\'' || c == b',')
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// `Authorization: <scheme> <credential>` and `Bearer <token>` anywhere in `text`.
fn auth_values(key: &Keys<'_>, text: &[u8], found: &mut Found) {
    for at in find_ci(text, b"authorization:") {
        let (first, rest) = word(&text[at + b"authorization:".len()..]);
        let (second, _) = word(rest);
        let credential = if second.is_empty() { first } else { second };
        if non_trivial(credential, CredKind::Generic) {
            found.add(
                key,
                classify(credential).unwrap_or(CredKind::Generic),
                credential,
            );
        }
    }
    for at in find_ci(text, b"bearer ") {
        // A word boundary before `bearer`, so `xbearer ` is not a scheme.
        if at > 0 && text[at - 1].is_ascii_alphanumeric() {
            continue;
        }
        let (token, _) = word(&text[at + b"bearer ".len()..]);
        if non_trivial(token, CredKind::Generic) {
            found.add(key, classify(token).unwrap_or(CredKind::Generic), token);
        }
    }
}

/// A flag's name when `arg` is a flag: one or two dashes then a letter.
fn flag_name(arg: &[u8]) -> Option<&[u8]> {
    let name = arg.strip_prefix(b"--").or_else(|| arg.strip_prefix(b"-"))?;
    name.first()
        .is_some_and(u8::is_ascii_alphabetic)
        .then_some(name)
}

/// One finding in a command line: argument index, introducing flag, kind, fingerprint.
pub(super) type ArgFinding = (usize, Option<String>, CredKind, Fingerprint);

pub(super) fn argv(key: &Keys<'_>, args: &[&[u8]]) -> Vec<ArgFinding> {
    let mut out: Vec<ArgFinding> = Vec::new();
    // The flag (`--token`) whose value is the next argument.
    let mut pending: Option<(String, CredKind)> = None;
    for (index, &arg) in args.iter().enumerate() {
        let mut found = Found::default();
        let mut flag_of_value = None;
        // A following `--flag` is not a value: the preceding flag had none (`--password-x`).
        if let Some((flag, kind)) = pending.take().filter(|_| !arg.starts_with(b"--")) {
            let v = arg.trim_ascii();
            if non_trivial(v, kind) {
                found.add(key, classify(v).unwrap_or(kind), v);
                flag_of_value = Some(flag);
            }
        } else if let Some(name) = flag_name(arg) {
            let dashes = arg.len() - name.len();
            if let Some(eq) = name.iter().position(|&c| c == b'=') {
                // `--token=VALUE`
                let (fname, v) = (&name[..eq], name[eq + 1..].trim_ascii());
                if let Some(kind) = secret_name(fname)
                    && non_trivial(v, kind)
                {
                    found.add(key, classify(v).unwrap_or(kind), v);
                    flag_of_value = Some(String::from_utf8_lossy(&arg[..dashes + eq]).into_owned());
                }
            } else if let Some(kind) = secret_name(name) {
                // `--token VALUE`: the value is the next argument.
                pending = Some((String::from_utf8_lossy(arg).into_owned(), kind));
            }
        }
        found.merge(embedded(key, arg));
        for (kind, fp) in found.into_vec() {
            out.push((index, flag_of_value.clone(), kind, fp));
        }
    }
    out
}
