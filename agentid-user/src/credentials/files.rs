//! Credential files: which paths are well known, reading them safely, and finding the
//! credentials in their content so that the same token fingerprints the same in a file,
//! another file, or an environment variable.
use std::{
    io::{ErrorKind, Read},
    path::{Component, Path},
};

use zeroize::Zeroizing;

use super::{
    CredError, CredKind, Fingerprint, SecretBytes,
    detect::{self, Found},
    issued::Keys,
    key::open_nofollow,
};

/// Largest credential file read. Credential files are small; anything larger is not one,
/// and a cap keeps a hostile file from costing memory.
pub const MAX_CREDENTIAL_FILE: usize = 64 * 1024;

/// Whether `path` is a well-known credential location: `~/.aws/credentials`,
/// `~/.config/gcloud/**`, `~/.kube/config`, `~/.ssh/id_*` (not `.pub`),
/// `/run/secrets/**/token` and `/var/run/secrets/**/token`, and `.env` / `.env.*` files
/// anywhere (not `.env.example`, `.env.sample`, `.env.template`).
///
/// `~` is `/root`, any `/home/<user>`, and each of `homes` (home directories elsewhere,
/// such as service accounts' from `/etc/passwd`). `path` must be absolute; it is normalized
/// lexically (`//`, `.`, `..`), so resolve relative paths against the process's cwd first.
pub fn is_well_known_credential_path(path: &str, homes: &[&str]) -> bool {
    let comps = normalize(path);
    let Some(base) = comps.last() else {
        return false;
    };
    if *base == ".env"
        || (base.starts_with(".env.")
            && ![".env.example", ".env.sample", ".env.template"].contains(base))
    {
        return true;
    }
    let under = |prefix: &[&str]| comps.len() > prefix.len() && comps.starts_with(prefix);
    if (under(&["run", "secrets"]) || under(&["var", "run", "secrets"])) && *base == "token" {
        return true;
    }
    let mut rests: Vec<&[&str]> = Vec::new();
    if comps.first() == Some(&"root") {
        rests.push(&comps[1..]);
    }
    if comps.first() == Some(&"home") && comps.len() > 2 {
        rests.push(&comps[2..]);
    }
    for home in homes {
        let home = normalize(home);
        if !home.is_empty() && comps.len() > home.len() && comps.starts_with(&home) {
            rests.push(&comps[home.len()..]);
        }
    }
    rests.into_iter().any(|rest| match rest {
        [".aws", "credentials"] | [".kube", "config"] | [".config", "gcloud", _, ..] => true,
        // Exact `.pub`: ssh-keygen writes it lower case, and `id_x.PUB` is not a public key.
        [".ssh", name] => name.starts_with("id_") && !has_suffix(name, ".pub"),
        _ => false,
    })
}

fn has_suffix(name: &str, suffix: &str) -> bool {
    name.as_bytes().ends_with(suffix.as_bytes())
}

fn normalize(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(s) => out.extend(s.to_str()),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Reads a credential file without following a symbolic link (`O_NOFOLLOW`), without
/// blocking on a FIFO, only when it is a regular file of at most [`MAX_CREDENTIAL_FILE`]
/// bytes. The content is wiped on drop and never formatted.
pub fn read_credential_file(path: &Path) -> Result<SecretBytes, CredError> {
    let io = |source| CredError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = open_nofollow(path)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(CredError::NotRegular {
            path: path.to_owned(),
        });
    }
    let too_large = || CredError::TooLarge {
        path: path.to_owned(),
        max: MAX_CREDENTIAL_FILE,
    };
    if meta.len() > MAX_CREDENTIAL_FILE as u64 {
        return Err(too_large());
    }
    // Allocated once at full size: growing a Vec would leave unwiped copies of the content.
    let mut buf = Zeroizing::new(vec![0u8; MAX_CREDENTIAL_FILE + 1]);
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                // The file grew after the size check.
                if len > MAX_CREDENTIAL_FILE {
                    return Err(too_large());
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    buf.truncate(len);
    Ok(SecretBytes::new(buf))
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [q @ (b'"' | b'\''), inner @ .., last] if last == q => inner,
        _ => v,
    }
}

fn is_name(n: &[u8]) -> bool {
    !n.is_empty()
        && n.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

/// `NAME=value` lines (with `[section]` headers, `#`/`;` comments, `export `), as in `.env`
/// and AWS credentials files; `None` when some line is anything else.
fn key_value_lines(content: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut pairs = Vec::new();
    for line in content.split(|&c| c == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") || line.starts_with(b";") {
            continue;
        }
        if line.starts_with(b"[") && line.ends_with(b"]") {
            continue;
        }
        let line = line.strip_prefix(b"export ").unwrap_or(line);
        let eq = line.iter().position(|&c| c == b'=')?;
        let (name, value) = (line[..eq].trim_ascii(), line[eq + 1..].trim_ascii());
        // `abc==` is a base64 value, not the pair (`abc`, `=`).
        if !is_name(name) || value.iter().all(|&c| c == b'=') && !value.is_empty() {
            return None;
        }
        pairs.push((name, unquote(value)));
    }
    (!pairs.is_empty()).then_some(pairs)
}

/// `name: value` or `"name": "value",` (YAML, JSON) on one line.
fn named_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = line.trim_ascii();
    let line = line.strip_prefix(b"- ").unwrap_or(line);
    let colon = line.iter().position(|&c| c == b':')?;
    let name = unquote(line[..colon].trim_ascii());
    let value = line[colon + 1..].trim_ascii();
    let value = unquote(value.strip_suffix(b",").unwrap_or(value).trim_ascii());
    is_name(name).then_some((name, value))
}

pub(super) fn scan_content(key: &Keys<'_>, content: &[u8]) -> Vec<(CredKind, Fingerprint)> {
    let t = content.trim_ascii();
    if t.is_empty() {
        return Vec::new();
    }
    let mut found = Found::default();
    let one_token = !t.iter().any(u8::is_ascii_whitespace);
    if t.starts_with(b"-----BEGIN") && t.windows(11).any(|w| w == b"PRIVATE KEY") {
        found.merge(whole(key, CredKind::PrivateKey, t));
    } else if one_token && let Some(kind) = detect::classify(t) {
        found.merge(whole(key, kind, t));
    } else if let Some(pairs) = key_value_lines(t) {
        for (name, value) in pairs {
            found.merge(detect::assignment(key, name, value));
        }
    } else if one_token {
        // A token file in no known format (a service-account token, a password file).
        found.merge(whole(key, CredKind::Generic, t));
    } else {
        // Structured files (kube config, gcloud JSON): the whole content is one credential,
        // and secrets inside it are credentials of their own, matching the same values
        // seen elsewhere.
        found.merge(whole(key, CredKind::Generic, t));
        for line in t.split(|&c| c == b'\n') {
            match named_line(line) {
                Some((name, value)) => found.merge(detect::assignment(key, name, value)),
                None => found.merge(detect::embedded(key, line)),
            }
        }
    }
    found.into_vec()
}

fn whole(key: &Keys<'_>, kind: CredKind, value: &[u8]) -> Found {
    let mut found = Found::default();
    found.add(key, kind, value);
    found
}
