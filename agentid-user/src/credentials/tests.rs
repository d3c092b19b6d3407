//! Every token here is a fake built in the test (repeated fragments), never a real secret.
use std::{
    os::unix::fs::{MetadataExt, PermissionsExt, symlink},
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use super::{detect::classify, *};

fn key() -> FingerprintKey {
    FingerprintKey::from_fleet_key(&"ab".repeat(32)).unwrap()
}

fn scanner() -> Scanner {
    Scanner::new(key())
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "agentid-creds-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- fake tokens ----

fn openai() -> String {
    format!("sk-proj-{}", "Ab3dE5fG7hJ9kL1m".repeat(3))
}
fn anthropic() -> String {
    format!("sk-ant-api03-{}", "Zx9Yw8Vu7Ts6Rq5P".repeat(6))
}
fn github() -> String {
    format!("ghp_{}", "aB3cD4eF5g".repeat(4)[..36].to_owned())
}
fn aws_id() -> String {
    "AKIA".to_owned() + "Q3ZT7XK2M9B4WPL6"
}
fn aws_secret() -> String {
    "wJalrXUtnFEMI/K7MDENG+bPxRfiCY".to_owned() + "Q9z8Y7x6W5"
}
fn google() -> String {
    "AIza".to_owned() + &"Sy-B3_cD4eF5gH6".repeat(3)[..35]
}
fn jwt(header: &str) -> String {
    use base64::Engine;
    let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        enc(header),
        enc(r#"{"sub":"agent-7","iat":1700000000}"#),
        "Sf1KxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    )
}

fn obs_kind(o: &[Observation]) -> Vec<CredKind> {
    o.iter().map(|o| o.kind).collect()
}

// ---- formats ----

#[test]
fn formats_true_positives() {
    assert_eq!(classify(openai().as_bytes()), Some(CredKind::Openai));
    let legacy = format!("sk-{}", "T3BlbkFJ4kq9".repeat(4));
    assert_eq!(classify(legacy.as_bytes()), Some(CredKind::Openai));
    assert_eq!(classify(anthropic().as_bytes()), Some(CredKind::Anthropic));
    assert_eq!(classify(github().as_bytes()), Some(CredKind::Github));
    for p in ["gho_", "ghs_", "ghu_", "ghr_"] {
        let t = format!("{p}{}", &github()[4..]);
        assert_eq!(classify(t.as_bytes()), Some(CredKind::Github), "{p}");
    }
    let pat = format!(
        "github_pat_11ABCDEFG0{}_{}",
        "a1B2c3".repeat(2),
        "Zz9".repeat(20)
    );
    assert_eq!(classify(pat.as_bytes()), Some(CredKind::Github));
    let gl = format!("glpat-{}", "xY7-zW6_vU5t".repeat(2));
    assert_eq!(classify(gl.as_bytes()), Some(CredKind::Gitlab));
    assert_eq!(classify(aws_id().as_bytes()), Some(CredKind::Aws));
    assert_eq!(classify(b"ASIAQ3ZT7XK2M9B4WPL6"), Some(CredKind::Aws));
    for p in ["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-"] {
        let t = format!("{p}123456789012-1234567890123-{}", "AbCdEf123456".repeat(2));
        assert_eq!(classify(t.as_bytes()), Some(CredKind::Slack), "{p}");
    }
    assert_eq!(classify(google().as_bytes()), Some(CredKind::Google));
    let t = jwt(r#"{"alg":"HS256","typ":"JWT"}"#);
    assert_eq!(classify(t.as_bytes()), Some(CredKind::Jwt));
}

#[test]
fn formats_false_positives() {
    let cases: Vec<String> = vec![
        // OpenAI look-alikes: too short, one character class, bad charset.
        "sk-short123".into(),
        "sk-learn-scikit-tutorial-notebooks-and-more".into(),
        format!("sk-{}", "x".repeat(48)),
        format!("sk-{}", "Ab3!".repeat(12)),
        // Anthropic prefix with a short body is nothing, not OpenAI.
        format!("sk-ant-{}", "Ab3".repeat(10)),
        // GitHub: short, placeholder, bad charset, unknown prefix.
        format!("ghp_{}", &github()[4..39]),
        format!("ghp_{}", "x".repeat(36)),
        format!("ghp_{}-", &github()[4..39]),
        format!("ghx_{}", &github()[4..]),
        format!("github_pat_{}", "a1B2".repeat(5)),
        "glpat-short".into(),
        format!("glpat-{}", "Ab3 ".repeat(6)),
        // AWS: wrong length, lower case, wrong prefix.
        "AKIAQ3ZT7XK2M9B4WPL".into(),
        "AKIAQ3ZT7XK2M9B4WPL6X".into(),
        "AKIAq3zt7xk2m9b4wpl6".into(),
        "AKIBQ3ZT7XK2M9B4WPL6".into(),
        // Slack: short, unknown type, no digits.
        "xoxb-12345-abc".into(),
        format!(
            "xoxq-123456789012-1234567890123-{}",
            "AbCdEf123456".repeat(2)
        ),
        format!("xoxb-{}", "AbCdEfGhIjKlMnOpQrStUv"),
        // Google: one short, one long.
        google()[..38].to_owned(),
        format!("{}A", google()),
        // JWT: no alg, two parts, header not JSON, empty signature.
        jwt(r#"{"typ":"JWT"}"#),
        jwt(r#"{"alg":"HS256"}"#)
            .rsplit_once('.')
            .unwrap()
            .0
            .to_owned(),
        "eyJub3QganNvbg.eyJzdWIiOiIxIn0.c2ln".into(),
        format!("{}.", jwt(r#"{"alg":"none"}"#).rsplit_once('.').unwrap().0),
        // Ordinary words and identifiers.
        "hello-world".into(),
        "AKIA".into(),
        String::new(),
    ];
    for c in &cases {
        assert_eq!(classify(c.as_bytes()), None, "{c}");
    }
}

#[test]
fn anthropic_beats_openai() {
    let o = scanner().scan_env(
        [format!("KEY_FOR_LLM={}", anthropic())]
            .iter()
            .map(String::as_bytes),
    );
    assert_eq!(obs_kind(&o), [CredKind::Anthropic]);
}

#[test]
fn kind_names_round_trip() {
    for k in CredKind::ALL {
        assert_eq!(k.to_string().parse::<CredKind>(), Ok(k));
        assert_eq!(k.to_string(), k.to_string().to_lowercase());
        assert!(!k.to_string().contains(':'));
    }
    assert_eq!(CredKind::Openai.to_string(), "openai");
    assert_eq!(CredKind::Aws.to_string(), "aws");
    assert_eq!(
        serde_json::to_string(&CredKind::AwsSecret).unwrap(),
        "\"aws-secret\""
    );
}

// ---- environment ----

fn env(entries: &[&str]) -> Vec<Observation> {
    scanner().scan_env(entries.iter().map(|s| s.as_bytes()))
}

fn env_name(o: &Observation) -> &str {
    match &o.source {
        Source::Env { name } => name,
        other => panic!("not env: {other:?}"),
    }
}

#[test]
fn env_detects_formats_and_secret_names() {
    let oa = format!("OPENAI_API_KEY={}", openai());
    let aws_sec = format!("AWS_SECRET_ACCESS_KEY={}", aws_secret());
    let aws_id = format!("AWS_ACCESS_KEY_ID={}", aws_id());
    let gh = format!("SOMETHING_UNRELATED={}", github());
    let o = env(&[
        &oa,
        "MY_SERVICE_TOKEN=tok-9f8e7d6c5b",
        "DB_PASSWORD=hunter22",
        "PGPASSWORD=pgsecret1",
        "MYSQL_PWD=mysqlpw1",
        "STRIPE_API_KEY=rk_live_abcdefgh12345",
        "APP_SECRET_KEY_BASE=9f8e7d6c5b4a39281706",
        "GOOGLE_APPLICATION_CREDENTIALS_JSON={\"type\":\"service_account\"}",
        &aws_sec,
        "AWS_SESSION_TOKEN=IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJH",
        &aws_id,
        &gh,
    ]);
    let got: Vec<(&str, CredKind)> = o.iter().map(|o| (env_name(o), o.kind)).collect();
    assert_eq!(
        got,
        [
            ("OPENAI_API_KEY", CredKind::Openai),
            ("MY_SERVICE_TOKEN", CredKind::Generic),
            ("DB_PASSWORD", CredKind::Password),
            ("PGPASSWORD", CredKind::Password),
            ("MYSQL_PWD", CredKind::Password),
            ("STRIPE_API_KEY", CredKind::Generic),
            ("APP_SECRET_KEY_BASE", CredKind::Generic),
            ("GOOGLE_APPLICATION_CREDENTIALS_JSON", CredKind::Generic),
            ("AWS_SECRET_ACCESS_KEY", CredKind::AwsSecret),
            ("AWS_SESSION_TOKEN", CredKind::AwsSecret),
            ("AWS_ACCESS_KEY_ID", CredKind::Aws),
            ("SOMETHING_UNRELATED", CredKind::Github),
        ]
    );
}

#[test]
fn env_ignores_benign_variables() {
    let o = env(&[
        "SSH_AUTH_SOCK=/tmp/ssh-XXXXabcd/agent.1234",
        "GPG_AGENT_INFO=/run/user/1000/gnupg/S.gpg-agent:0:1",
        "XDG_RUNTIME_DIR=/run/user/1000",
        "XDG_SESSION_TOKEN_NAME=whatever-long-value",
        "TERM=xterm-256color",
        "KEYTIMEOUT=1",
        "KEYBOARD=us-intl-altgr",
        "KEYMAP=de-latin1-nodeadkeys",
        "XKB_KEYBOARD_LAYOUT=us,de,fr-bepo",
        "SSH_KEY_FILE=/home/u/.ssh/id_ed25519",
        "TLS_KEY_PATH=/etc/ssl/private/server.key",
        "GITHUB_TOKEN_URL=https://example.org/oauth",
        "VAULT_TOKEN_TTL=3600000000",
        "API_TOKEN_ENABLED=true",
        "MY_API_KEY=false",
        "PIN_TOKEN=123456",
        "SHORT_TOKEN=abc",
        "EMPTY_TOKEN=",
        "REF_TOKEN=${OTHER_TOKEN}",
        "TOKENIZERS_PARALLELISM=false",
        "PWD=/home/u/project-with-long-name",
        "OLDPWD=/home/u",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "HOME=/home/u",
        "LANG=en_US.UTF-8",
        "AWS_ACCESS_KEY_ID_NOTE=nothing-here-at-all",
        "GOOGLE_APPLICATION_CREDENTIALS=/home/u/.config/gcloud/sa-key.json",
        "NOEQUALSIGN",
        "DOCKER_PASSWORD_STDIN=1",
    ]);
    assert!(o.is_empty(), "{o:?}");
}

#[test]
fn env_tolerates_non_utf8_and_finds_url_passwords() {
    let mut weird = b"WEIRD_TOKEN=".to_vec();
    weird.extend_from_slice(b"\xff\xfeabcdefgh1");
    let o = scanner().scan_env(
        [
            &weird[..],
            b"DATABASE_URL=postgres://app:s3cret%21pw@db:5432/x",
        ]
        .into_iter(),
    );
    assert_eq!(obs_kind(&o), [CredKind::Generic, CredKind::Password]);
    assert_eq!(env_name(&o[0]), "WEIRD_TOKEN");
    assert_eq!(env_name(&o[1]), "DATABASE_URL");
    // The URL password is percent-decoded: the same password as a plain variable.
    let plain = env(&["DB_PASSWORD=s3cret!pw"]);
    assert_eq!(o[1].fingerprint.hmac, plain[0].fingerprint.hmac);
}

// ---- argv ----

fn argv(args: &[&str]) -> Vec<(usize, Option<String>, CredKind)> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    scanner()
        .scan_argv(&args)
        .into_iter()
        .map(|o| match o.source {
            Source::Arg { index, flag } => (index, flag, o.kind),
            other => panic!("not arg: {other:?}"),
        })
        .collect()
}

#[test]
fn argv_flag_forms() {
    let gh = format!("--token={}", github());
    assert_eq!(
        argv(&["tool", &gh]),
        [(1, Some("--token".into()), CredKind::Github)]
    );
    assert_eq!(
        argv(&["tool", "--token", "tok-9f8e7d6c5b"]),
        [(2, Some("--token".into()), CredKind::Generic)]
    );
    assert_eq!(
        argv(&["mysql", "--password=dbpw42", "db"]),
        [(1, Some("--password".into()), CredKind::Password)]
    );
    assert_eq!(
        argv(&["mysql", "--password", "dbpw42"]),
        [(2, Some("--password".into()), CredKind::Password)]
    );
    assert_eq!(
        argv(&["svc", "--api-key", "k-1a2b3c4d5e6f"]),
        [(2, Some("--api-key".into()), CredKind::Generic)]
    );
    assert_eq!(
        argv(&["java", "-password", "javapw99"]),
        [(2, Some("-password".into()), CredKind::Password)]
    );
}

#[test]
fn argv_ignores_ambiguous_and_benign() {
    for args in [
        &["mysql", "-p", "secretpw123"][..],
        &["mysql", "-psecretpw123"],
        &["sort", "--key", "2,3nr"],
        &["ssh", "-i", "/home/u/.ssh/id_ed25519"],
        &["tool", "--token-file", "/run/secrets/tok"],
        &["tool", "--password", "--verbose"],
        &["docker", "login", "--password-stdin", "someuser1"],
        &["tool", "--no-password", "positional-arg"],
        &["tool", "--token=true"],
        &["git", "clone", "https://example.org/repo.git"],
        &["echo", "the bearer of news"],
        &["ls", "-la", "/home/u"],
    ] {
        assert_eq!(argv(args), [], "{args:?}");
    }
}

#[test]
fn argv_headers_urls_and_tokens_anywhere() {
    let bearer = format!("Authorization: Bearer {}", "eyOpaque9f8e7d6c5b4a");
    assert_eq!(
        argv(&["curl", "-H", &bearer, "https://api.example.org"]),
        [(2, None, CredKind::Generic)]
    );
    let bearer_oa = format!("Authorization: Bearer {}", openai());
    assert_eq!(
        argv(&["curl", "-H", &bearer_oa]),
        [(2, None, CredKind::Openai)]
    );
    let gh_auth = format!("authorization: token {}", github());
    assert_eq!(
        argv(&["curl", "-H", &gh_auth]),
        [(2, None, CredKind::Github)]
    );
    assert_eq!(
        argv(&["curl", "-H", "X-Api-Key: k-1a2b3c4d5e6f"]),
        [(2, None, CredKind::Generic)]
    );
    assert_eq!(
        argv(&[
            "git",
            "clone",
            "https://bob:pa%40ssw0rd@git.example.org/r.git"
        ]),
        [(2, None, CredKind::Password)]
    );
    let gh_url = format!("https://x-access-token:{}@github.com/o/r", github());
    assert_eq!(
        argv(&["git", "push", &gh_url]),
        [(2, None, CredKind::Github)]
    );
    let g = format!("https://maps.example.org/api?key={}&q=x", google());
    assert_eq!(argv(&["curl", &g]), [(1, None, CredKind::Google)]);
    assert_eq!(
        argv(&["echo", &anthropic()]),
        [(1, None, CredKind::Anthropic)]
    );

    // The URL password fingerprints as the decoded password.
    let s = scanner();
    let o = s.scan_argv(&[b"git", b"https://bob:pa%40ssw0rd@h/r"]);
    assert_eq!(
        o[0].fingerprint.hmac,
        s.key().fingerprint(CredKind::Password, b"pa@ssw0rd").hmac
    );
}

// ---- fingerprints ----

#[test]
fn hmac_ignores_kind_and_surrounding_whitespace() {
    let k = key();
    let a = k.fingerprint(CredKind::Openai, b"value-1234");
    let b = k.fingerprint(CredKind::Generic, b"  value-1234\n");
    assert_eq!(a.hmac, b.hmac);
    assert!(a.same_credential(&b));
    assert_ne!(a, b);
    assert_ne!(a.hmac, k.fingerprint(CredKind::Openai, b"value-1235").hmac);
    // Another key, another fingerprint.
    let other = FingerprintKey::from_fleet_key(&"cd".repeat(32)).unwrap();
    assert_ne!(
        a.hmac,
        other.fingerprint(CredKind::Openai, b"value-1234").hmac
    );
}

#[test]
fn display_fromstr_serialize() {
    let fp = key().fingerprint(CredKind::Openai, openai().as_bytes());
    let shown = fp.to_string();
    assert_eq!(shown, format!("openai:{}", &fp.full_hex()[..12]));
    assert_eq!(fp.full_hex().len(), 64);
    assert_eq!(serde_json::to_string(&fp).unwrap(), format!("\"{shown}\""));

    let prefix: FingerprintPrefix = shown.parse().unwrap();
    assert_eq!(prefix.to_string(), shown);
    assert_eq!(prefix.kind, Some(CredKind::Openai));
    assert!(prefix.matches(&fp));
    // Kind is a label: the same credential under another label still matches.
    assert!(prefix.matches(&key().fingerprint(CredKind::Generic, openai().as_bytes())));
    assert!(!prefix.matches(&key().fingerprint(CredKind::Openai, b"other-value")));
    let bare: FingerprintPrefix = fp.full_hex()[..16].to_uppercase().parse().unwrap();
    assert_eq!(bare.kind, None);
    assert!(bare.matches(&fp));

    let full: Fingerprint = format!("openai:{}", fp.full_hex()).parse().unwrap();
    assert_eq!(full, fp);

    assert_eq!(
        shown.parse::<Fingerprint>(),
        Err(ParseFingerprintError::NotFull)
    );
    assert_eq!(
        fp.full_hex().parse::<Fingerprint>(),
        Err(ParseFingerprintError::MissingKind)
    );
    assert_eq!(
        "nope:3f9a0c1d2e4b".parse::<FingerprintPrefix>(),
        Err(ParseFingerprintError::UnknownKind)
    );
    assert_eq!(
        "openai:3f9a0c1d2e4z".parse::<FingerprintPrefix>(),
        Err(ParseFingerprintError::NotHex)
    );
    assert_eq!(
        "openai:3f9a0c".parse::<FingerprintPrefix>(),
        Err(ParseFingerprintError::Length(6))
    );
    // A secret pasted by mistake is not echoed by the error.
    let err = openai()
        .parse::<FingerprintPrefix>()
        .unwrap_err()
        .to_string();
    assert!(!err.contains(&openai()[8..]), "{err}");
}

// ---- key ----

#[test]
fn key_file_created_0600_and_reloaded() {
    let dir = TempDir::new();
    let path = dir.join("state/fingerprint.key");
    let k1 = FingerprintKey::load_or_create(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.len(), 32);
    // No temp file left behind.
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );
    let k2 = FingerprintKey::load_or_create(&path).unwrap();
    assert_eq!(
        k1.fingerprint(CredKind::Generic, b"x").hmac,
        k2.fingerprint(CredKind::Generic, b"x").hmac
    );
    // Two hosts, two keys.
    let k3 = FingerprintKey::load_or_create(&dir.join("other.key")).unwrap();
    assert_ne!(
        k1.fingerprint(CredKind::Generic, b"x").hmac,
        k3.fingerprint(CredKind::Generic, b"x").hmac
    );
    assert_eq!(format!("{k1:?}"), "FingerprintKey(<redacted>)");
}

#[test]
fn key_file_group_readable_refused() {
    let dir = TempDir::new();
    let path = dir.join("fingerprint.key");
    FingerprintKey::load_or_create(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = FingerprintKey::load_or_create(&path).unwrap_err();
    assert!(
        matches!(err, CredError::InsecureMode { mode: 0o640, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("0640"),
        "{msg}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
    assert!(matches!(
        FingerprintKey::load_or_create(&path),
        Err(CredError::InsecureMode { .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(FingerprintKey::load_or_create(&path).is_ok());
    // Only root can hand a file to another user; elsewhere this part cannot be set up.
    if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        assert!(matches!(
            FingerprintKey::load_or_create(&path),
            Err(CredError::ForeignOwner { owner: 65534, .. })
        ));
    }
}

#[test]
fn key_file_symlink_and_bad_length_refused() {
    let dir = TempDir::new();
    let real = dir.join("real.key");
    FingerprintKey::load_or_create(&real).unwrap();
    let link = dir.join("link.key");
    symlink(&real, &link).unwrap();
    assert!(matches!(
        FingerprintKey::load_or_create(&link),
        Err(CredError::Symlink { .. })
    ));
    // A dangling symlink is not "missing": it must not be created through.
    let dangling = dir.join("dangling.key");
    symlink(dir.join("nowhere"), &dangling).unwrap();
    assert!(FingerprintKey::load_or_create(&dangling).is_err());
    assert!(!dir.join("nowhere").exists());

    let short = dir.write("short.key", b"0123456789");
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        FingerprintKey::load_or_create(&short),
        Err(CredError::KeyFileLength {
            len: 10,
            expected: 32,
            ..
        })
    ));
}

#[test]
fn fleet_key_encodings_and_length() {
    use base64::Engine;
    let bytes: Vec<u8> = (0u8..32).map(|b| b.wrapping_mul(7)).collect();
    let from_hex = FingerprintKey::from_fleet_key(&hex::encode(&bytes)).unwrap();
    let from_b64 =
        FingerprintKey::from_fleet_key(&base64::engine::general_purpose::STANDARD.encode(&bytes))
            .unwrap();
    let from_url = FingerprintKey::from_fleet_key(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes),
    )
    .unwrap();
    let fp = |k: &FingerprintKey| k.fingerprint(CredKind::Generic, b"shared").hmac;
    assert_eq!(fp(&from_hex), fp(&from_b64));
    assert_eq!(fp(&from_hex), fp(&from_url));
    // Keys longer than the HMAC block are accepted (hashed as HMAC specifies).
    assert!(FingerprintKey::from_fleet_key(&"ab".repeat(100)).is_ok());
    assert!(matches!(
        FingerprintKey::from_fleet_key(&"ab".repeat(31)),
        Err(CredError::FleetKeyTooShort { len: 31, min: 32 })
    ));
    let secretish = "not a key at all!!";
    let err = FingerprintKey::from_fleet_key(secretish).unwrap_err();
    assert!(matches!(err, CredError::FleetKeyEncoding));
    assert!(!err.to_string().contains(secretish));
}

// ---- files ----

#[test]
fn well_known_paths() {
    for p in [
        "/home/alice/.aws/credentials",
        "/root/.aws/credentials",
        "/home/bob/.config/gcloud/application_default_credentials.json",
        "/home/bob/.config/gcloud/legacy_credentials/bob@example.org/adc.json",
        "/root/.kube/config",
        "/home/alice/.ssh/id_ed25519",
        "/home/alice/.ssh/id_rsa",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/run/secrets/eks.amazonaws.com/serviceaccount/token",
        "/srv/app/.env",
        "/home/alice/project/.env.production",
        "/home/alice//.aws/./credentials",
        "/home/alice/x/../.kube/config",
        "/var/lib/agent/.aws/credentials",
    ] {
        assert!(is_well_known_credential_path(p, &["/var/lib/agent"]), "{p}");
    }
    for p in [
        "/home/alice/.ssh/id_ed25519.pub",
        "/home/alice/.ssh/known_hosts",
        "/home/alice/.ssh/config",
        "/home/alice/.aws/config",
        "/home/alice/.config/gcloud",
        "/home/.aws/credentials",
        "/etc/.aws/credentials",
        "/var/lib/agent/.aws/credentials",
        "/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        "/run/secrets",
        "/srv/app/.env.example",
        "/srv/app/.envrc",
        "/srv/app/env",
        "/home/alice/project/.kube/config",
        "",
        "/",
    ] {
        assert!(!is_well_known_credential_path(p, &[]), "{p}");
    }
}

fn scan_file(path: &str, content: &[u8]) -> Vec<Observation> {
    scanner().scan_file_content(Path::new(path), content)
}

#[test]
fn same_token_same_fingerprint_across_files_and_env() {
    let token = github();
    let a = scan_file("/a/token", format!("{token}\n").as_bytes());
    let b = scan_file("/b/other-name", format!("  {token}  ").as_bytes());
    let dotenv = scan_file(
        "/srv/.env",
        format!("# comment\nexport GH_TOKEN=\"{token}\"\n").as_bytes(),
    );
    let e = env(&[&format!("GH_TOKEN={token}")]);
    let arg = argv(&["gh", "--token", &token]);
    assert_eq!(obs_kind(&a), [CredKind::Github]);
    assert_eq!(a[0].fingerprint, b[0].fingerprint);
    assert_eq!(a[0].fingerprint, dotenv[0].fingerprint);
    assert_eq!(a[0].fingerprint, e[0].fingerprint);
    assert_eq!(arg[0].2, CredKind::Github);
    assert_eq!(
        a[0].source,
        Source::File {
            path: "/a/token".into()
        }
    );

    // A token in no known format: Generic in a file, Generic by name in env, one hmac.
    let opaque = "Zq8wXv7uTs6rQp5o";
    let f = scan_file("/run/secrets/svc/token", opaque.as_bytes());
    let e = env(&[&format!("SVC_TOKEN={opaque}")]);
    assert_eq!(obs_kind(&f), [CredKind::Generic]);
    assert_eq!(f[0].fingerprint.hmac, e[0].fingerprint.hmac);

    // A base64 token ending in `=` is one token, not `name=value`.
    let b64 = scan_file("/t", b"QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    assert_eq!(obs_kind(&b64), [CredKind::Generic]);
}

#[test]
fn key_value_files() {
    let ini = format!(
        "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\nregion = eu-west-1\n\n[other]\n; comment\naws_secret_access_key={}\n",
        aws_id(),
        aws_secret(),
        aws_secret()
    );
    let o = scan_file("/root/.aws/credentials", ini.as_bytes());
    assert_eq!(obs_kind(&o), [CredKind::Aws, CredKind::AwsSecret]);
    let e = env(&[&format!("AWS_SECRET_ACCESS_KEY={}", aws_secret())]);
    assert_eq!(o[1].fingerprint, e[0].fingerprint);

    let dotenv = format!(
        "OPENAI_API_KEY='{}'\nDEBUG=true\nDB_PASSWORD=\"pw-0987\"\nLOG_DIR=/var/log/app\n",
        openai()
    );
    let o = scan_file("/srv/.env", dotenv.as_bytes());
    assert_eq!(obs_kind(&o), [CredKind::Openai, CredKind::Password]);
    assert_eq!(
        o[0].fingerprint,
        env(&[&format!("OPENAI_API_KEY={}", openai())])[0].fingerprint
    );
    assert_eq!(
        o[1].fingerprint.hmac,
        env(&["DB_PASSWORD=pw-0987"])[0].fingerprint.hmac
    );
}

#[test]
fn structured_and_private_key_files() {
    let pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\nAAAAAAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAI\n-----END OPENSSH PRIVATE KEY-----\n";
    let a = scan_file("/home/a/.ssh/id_ed25519", pem.as_bytes());
    let b = scan_file("/home/b/.ssh/id_copy", pem.as_bytes());
    assert_eq!(obs_kind(&a), [CredKind::PrivateKey]);
    assert_eq!(a[0].fingerprint, b[0].fingerprint);

    let token = jwt(r#"{"alg":"RS256","kid":"k1"}"#);
    let kube = format!(
        "apiVersion: v1\nkind: Config\nusers:\n- name: agent\n  user:\n    token: {token}\n    password: \"kubepw-1\"\n"
    );
    let o = scan_file("/root/.kube/config", kube.as_bytes());
    assert_eq!(
        obs_kind(&o),
        [CredKind::Generic, CredKind::Jwt, CredKind::Password]
    );
    let e = env(&[&format!("KUBE_TOKEN={token}")]);
    assert_eq!(o[1].fingerprint, e[0].fingerprint);
}

#[test]
fn read_credential_file_rules() {
    let dir = TempDir::new();
    let path = dir.write("token", b"tok-9f8e7d6c5b\n");
    assert_eq!(
        &read_credential_file(&path).unwrap()[..],
        b"tok-9f8e7d6c5b\n"
    );
    let link = dir.join("link");
    symlink(&path, &link).unwrap();
    assert!(matches!(
        read_credential_file(&link),
        Err(CredError::Symlink { .. })
    ));
    let big = dir.write("big", &vec![b'a'; MAX_CREDENTIAL_FILE + 1]);
    assert!(matches!(
        read_credential_file(&big),
        Err(CredError::TooLarge { .. })
    ));
    let exact = dir.write("exact", &vec![b'a'; MAX_CREDENTIAL_FILE]);
    assert_eq!(
        read_credential_file(&exact).unwrap().len(),
        MAX_CREDENTIAL_FILE
    );
    assert!(matches!(
        read_credential_file(&dir.0),
        Err(CredError::NotRegular { .. })
    ));
    assert!(matches!(
        read_credential_file(&dir.join("missing")),
        Err(CredError::Io { .. })
    ));
}

// ---- the one rule ----

#[test]
fn canary_never_leaves() {
    let canary = "CanaryQ7xZ2w9Vb4Nm8Kp3";
    let openai_canary = format!("sk-{canary}{canary}");
    let mut s = scanner();
    let mut obs = s.scan_env(
        [
            format!("MY_TOKEN={canary}"),
            format!("DB_PASSWORD={canary}"),
            format!("OPENAI_API_KEY={openai_canary}"),
            format!("DATABASE_URL=postgres://u:{canary}@h/db"),
        ]
        .iter()
        .map(String::as_bytes),
    );
    let bearer = format!("Authorization: Bearer {canary}");
    let pw = format!("--password={canary}");
    let url = format!("https://u:{canary}@h/");
    let args: Vec<&[u8]> = vec![
        b"curl",
        b"-H",
        bearer.as_bytes(),
        pw.as_bytes(),
        b"--token",
        canary.as_bytes(),
        url.as_bytes(),
        openai_canary.as_bytes(),
    ];
    obs.extend(s.scan_argv(&args));
    let dir = TempDir::new();
    let file = dir.write("token", canary.as_bytes());
    let content = read_credential_file(&file).unwrap();
    assert_eq!(
        format!("{content:?}"),
        format!("Secret(<redacted, {} bytes>)", canary.len())
    );
    obs.extend(s.scan_file_content(&file, &content));
    obs.extend(s.scan_file_content(
        Path::new("/t/.env"),
        format!("API_KEY={canary}\n").as_bytes(),
    ));
    obs.extend(s.scan_file_content(
        Path::new("/t/cfg.yaml"),
        format!("a: b\npassword: {canary}\n").as_bytes(),
    ));
    assert_eq!(obs.len(), 4 + 5 + 1 + 1 + 2, "{obs:?}");

    // Every fragment of 6+ characters of the canary must be absent from every rendering.
    let fragments: Vec<&str> = (0..=canary.len() - 6).map(|i| &canary[i..i + 6]).collect();
    let mut renderings = vec![
        format!("{obs:?}"),
        format!("{:?}", s),
        format!("{:?}", s.key()),
    ];
    for o in &obs {
        renderings.push(format!("{o:?}"));
        renderings.push(format!("{o:#?}"));
        renderings.push(o.fingerprint.to_string());
        renderings.push(o.fingerprint.full_hex());
        renderings.push(o.kind.to_string());
        renderings.push(serde_json::to_string(o).unwrap());
        renderings.push(serde_json::to_string_pretty(&o.source).unwrap());
    }
    for r in &renderings {
        for f in &fragments {
            assert!(!r.contains(f), "canary fragment {f:?} leaked in {r}");
        }
    }
}

#[test]
fn concurrent_key_creation_agrees() {
    let dir = TempDir::new();
    let path = dir.join("race.key");
    let hmacs: Vec<[u8; 32]> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    FingerprintKey::load_or_create(&path)
                        .unwrap()
                        .fingerprint(CredKind::Generic, b"x")
                        .hmac
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The link-based create never replaces a key another starter already uses.
    assert!(hmacs.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
}

#[test]
fn clean_entry_memo_never_hides_a_credential() {
    let mut s = scanner();
    let clean: [&[u8]; 2] = [b"HOME=/home/bot", b"PATH=/usr/bin:/bin"];
    assert!(s.scan_env(clean.iter().copied()).is_empty());
    // Same clean entries again (now remembered) plus a secret: the secret is found, every
    // time it comes, with the same fingerprint.
    let with_secret: [&[u8]; 3] = [
        b"HOME=/home/bot",
        b"OPENAI_API_KEY=sk-proj-Ben3chFakeKeyQ7x9Lm2Np4Rt6Vw8Yz0a1b2c3",
        b"PATH=/usr/bin:/bin",
    ];
    let first = s.scan_env(with_secret.iter().copied());
    let second = s.scan_env(with_secret.iter().copied());
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first, second);
    assert_eq!(
        first[0].source,
        Source::Env {
            name: "OPENAI_API_KEY".into()
        }
    );
    // A remembered clean name with a token as its value is scanned, not taken for the
    // remembered entry.
    let same_name: [&[u8]; 1] = [b"HOME=ghp_0123456789abcdefghijABCDEFGHIJ012345"];
    let found = s.scan_env(same_name.iter().copied());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].kind, CredKind::Github);
}

/// An issuer that signed exactly one token (recognised by its bytes).
#[derive(Debug)]
struct OneToken(&'static str);

impl TokenIssuer for OneToken {
    fn recognise(&self, token: &[u8], _: &Fingerprint) -> Option<TokenOrigin> {
        (token == self.0.as_bytes()).then(|| TokenOrigin {
            jti: "j1".into(),
            kid: "k1".into(),
            agent: "spiffe://t.example/agent/a".into(),
            session: "a/1-1".into(),
            acting_for: Vec::new(),
            exp: 0,
            session_live: true,
        })
    }

    fn session_live(&self, _: &str) -> bool {
        true
    }
}

/// The issuer is asked wherever a JWT is found — environment, arguments (bare, after a
/// flag, inside a header argument), request headers, file content — and only its token is
/// marked; another JWT beside it is an ordinary one.
#[test]
fn issued_tokens_are_recognised_in_every_source() {
    const OURS: &str =
        "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhIn0.b3Vyc2lnbmF0dXJlb3Vyc2ln";
    const OTHER: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvdGhlciJ9.b3RoZXJzaWduYXR1cmVvdGhlcg";
    let mut s = scanner();
    s.set_issuer(Arc::new(OneToken(OURS)));
    let marked = |obs: &[Observation]| -> Vec<bool> {
        obs.iter()
            .map(|o| o.issued.as_ref().is_some_and(|t| t.jti == "j1"))
            .collect()
    };
    let env = [format!("SVID={OURS}"), format!("OTHER_TOKEN={OTHER}")];
    let found = s.scan_env(env.iter().map(String::as_bytes));
    assert_eq!(marked(&found), [true, false], "{found:?}");
    let bearer = format!("Authorization: Bearer {OURS}");
    let flag = format!("--token={OURS}");
    let args: [&[u8]; 4] = [b"curl", bearer.as_bytes(), flag.as_bytes(), OURS.as_bytes()];
    assert_eq!(marked(&s.scan_argv(&args)), [true, true, true]);
    let header = format!("authorization: Bearer {OURS}");
    let found = s.scan_headers("db.example", std::iter::once(header.as_bytes()));
    assert_eq!(marked(&found), [true]);
    let found = s.scan_file_content(Path::new("/t/token"), format!("{OURS}\n").as_bytes());
    assert_eq!(marked(&found), [true]);
    // Nothing of the token in what leaves.
    assert!(!format!("{found:?}").contains("b3Vyc2ln"));
}
