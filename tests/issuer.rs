//! The issuer (`[issuer]`): a real daemon serves the SPIFFE Workload API, and a client
//! nobody here wrote (the `spiffe` crate) fetches, validates and follows what it serves
//! from real processes in real cgroups, attested from the kernel.
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use agentid_tests::{
    TestCgroup,
    daemon::{Daemon, registration},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::Value;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");

fn agent_id(name: &str) -> String {
    format!("spiffe://test.example/agent/{name}")
}

/// A daemon with the issuer on, on a socket in the test's directory.
fn issuer_daemon(test: &str, agents: &[(&str, &TestCgroup)]) -> Option<(Daemon, PathBuf)> {
    let dir = Daemon::dir(test);
    let sock = dir.join("workload.sock");
    let config = dir.join("agentid.toml");
    let mut toml = std::fs::read_to_string(&config).expect("config");
    writeln!(
        toml,
        "\n[issuer]\nenabled = true\nsocket = \"{}\"\nttl = \"5m\"",
        sock.display()
    )
    .expect("format");
    std::fs::write(&config, toml).expect("config");
    for (name, cg) in agents {
        std::fs::write(
            dir.join("agents").join(format!("{name}.toml")),
            registration(name, cg),
        )
        .expect("registration");
    }
    Daemon::start(&dir).map(|d| (d, sock))
}

const PY_FETCH: &str = r#"
import json, sys, grpc
# grpcio (>= 1.57) sends the socket path as the HTTP/2 `:authority`, which tonic's h2
# refuses (PROTOCOL_ERROR); the standard channel option makes it `localhost`.
_plain = grpc.insecure_channel
grpc.insecure_channel = lambda target, options=None, compression=None: _plain(
    target, options=list(options or []) + [("grpc.default_authority", "localhost")],
    compression=compression)
from spiffe import WorkloadApiClient, JwtSvid
aud = sys.argv[1]
try:
    with WorkloadApiClient() as c:
        svid = c.fetch_jwt_svid(audience={aud})
        bundle = c.fetch_jwt_bundles().get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        JwtSvid.parse_and_validate(svid.token, bundle, {aud})
        checked = c.validate_jwt_svid(svid.token, aud)
        print(json.dumps({"token": svid.token, "validated": str(checked.spiffe_id)}), flush=True)
except Exception as e:
    print(json.dumps({"error": repr(e)}), flush=True)
sys.stdin.read()
"#;

/// A `jwt-fetch` workload; killed when dropped, however the test ends.
struct Fetcher {
    child: Child,
    line: Value,
}

impl Fetcher {
    fn run(cg: &TestCgroup, sock: &Path, aud: &str, as_id: Option<&str>) -> Self {
        let mut cmd = cg.command(WORKLOAD);
        cmd.arg("jwt-fetch").arg(aud);
        if let Some(id) = as_id {
            cmd.arg(id);
        }
        Self::spawn(cmd, sock)
    }

    /// py-spiffe (the `PyPI` `spiffe` package, from the venv `scripts/setup.sh` makes):
    /// fetch, validate against the bundle, and ask the server to validate too.
    fn python(cg: &TestCgroup, sock: &Path, aud: &str) -> Self {
        let venv = std::env::var("AGENTID_SPIFFE_VENV")
            .unwrap_or_else(|_| "/opt/agentid-spiffe-venv".into());
        let mut cmd = cg.command(format!("{venv}/bin/python3"));
        cmd.arg("-c").arg(PY_FETCH).arg(aud);
        Self::spawn(cmd, sock)
    }

    fn spawn(mut cmd: std::process::Command, sock: &Path) -> Self {
        let mut child = cmd
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix://{}", sock.display()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let stdout = child.stdout.take().expect("stdout");
        // The line is printed once the client is done (its own timeouts bound it); a
        // reader thread with a deadline keeps a stuck client from hanging the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_mins(1))
            .expect("the workload printed nothing within 60 s");
        let line =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("workload output {line:?}: {e}"));
        Self { child, line }
    }

    fn token(&self) -> &str {
        self.line["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {}", self.line))
    }

    /// Closes its stdin: the workload (the session's root) exits.
    fn end(mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "the workload did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWS has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

fn kid(token: &str) -> String {
    let header = token.split('.').next().expect("header");
    let h: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url")).expect("JSON");
    h["kid"].as_str().expect("kid").to_owned()
}

fn client(rt: &tokio::runtime::Runtime, sock: &Path) -> spiffe::WorkloadApiClient {
    rt.block_on(spiffe::WorkloadApiClient::connect_to(format!(
        "unix://{}",
        sock.display()
    )))
    .expect("connect to the Workload API")
}

fn bundle_has(rt: &tokio::runtime::Runtime, c: &spiffe::WorkloadApiClient, kid: &str) -> bool {
    let set = rt.block_on(c.fetch_jwt_bundles()).expect("bundles");
    let td: spiffe::TrustDomain = "test.example".parse().expect("td");
    set.get(&td)
        .is_some_and(|b| b.find_jwt_authority(kid).is_some())
}

/// A registered agent's process gets a token that the `spiffe` crate validates against
/// the bundle; its claims are the attested identity. When the session's root exits the
/// key leaves the bundle and the token stops validating, on the server and locally.
/// An unregistered caller and a caller asking for another agent's identity are refused.
#[test]
fn a_session_gets_a_token_that_dies_with_it() {
    let cg_a = TestCgroup::new("iss-a");
    let cg_b = TestCgroup::new("iss-b");
    let Some((d, sock)) = issuer_daemon("issuer-session", &[("iss-a", &cg_a), ("iss-b", &cg_b)])
    else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let fetcher = Fetcher::run(&cg_a, &sock, "db.example", None);
    let token = fetcher.token().to_owned();
    let c = claims(&token);
    assert_eq!(c["sub"], agent_id("iss-a"), "{c}");
    assert_eq!(c["aud"], serde_json::json!(["db.example"]), "{c}");
    let (iat, exp) = (
        c["iat"].as_u64().expect("iat"),
        c["exp"].as_u64().expect("exp"),
    );
    assert!(exp > iat && exp - iat <= 300, "exp {exp} iat {iat}");
    let session = c["sid"].as_str().expect("sid").to_owned();
    assert!(session.starts_with("iss-a/"), "{c}");
    assert_eq!(c["agentid.acting_for"], serde_json::json!([]), "{c}");
    assert!(c["jti"].as_str().is_some_and(|j| j.len() >= 20), "{c}");

    // Anyone may validate and read the bundle (the test process is no agent).
    let validator = client(&rt, &sock);
    let ok = rt
        .block_on(validator.validate_jwt_token("db.example", &token))
        .expect("ValidateJWTSVID accepts a live session's token");
    assert_eq!(
        ok.spiffe_id().to_string(),
        agent_id("iss-a"),
        "ValidateJWTSVID names the agent"
    );
    // The CLI's convenience for shell agents: a client of the same socket, attested alike.
    let cli_claims = cli_fetch(&cg_a, &sock, "cli.example");
    assert_eq!(cli_claims["sub"], agent_id("iss-a"), "{cli_claims}");
    let kid = kid(&token);
    assert!(
        bundle_has(&rt, &validator, &kid),
        "the key is in the bundle"
    );

    // Refused: the test process itself (unregistered), and B asking to be A.
    let err = rt
        .block_on(validator.fetch_jwt_svid(["db.example"], None))
        .expect_err("an unregistered caller gets no token");
    assert!(format!("{err:?}").contains("PermissionDenied"), "{err:?}");
    let as_a = Fetcher::run(&cg_b, &sock, "db.example", Some(&agent_id("iss-a")));
    let e = as_a.line["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("PermissionDenied") || e.contains("permission"),
        "{}",
        as_a.line
    );
    drop(as_a);

    // The API lists the token by jti, never the token.
    let tokens = d.cli_until(&["tokens"], |v| v.as_array().is_some_and(|a| !a.is_empty()));
    assert!(
        tokens
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t["jti"] == c["jti"])),
        "{tokens}"
    );
    assert_eq!(tokens[0]["state"], "live", "{tokens}");

    // Session end: the root exits; the key leaves the bundle.
    fetcher.end();
    let ended = Instant::now();
    let deadline = ended + Duration::from_secs(10);
    while bundle_has(&rt, &validator, &kid) {
        assert!(
            Instant::now() < deadline,
            "the ended session's key is still in the bundle after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "key left the bundle {:?} after the root exited",
        ended.elapsed()
    );
    rt.block_on(validator.validate_jwt_token("db.example", &token))
        .expect_err("ValidateJWTSVID refuses an ended session's token");
    let fresh = rt.block_on(validator.fetch_jwt_bundles()).expect("bundles");
    spiffe::JwtSvid::parse_and_validate(&token, &fresh, &["db.example"])
        .expect_err("local validation against the fresh bundle fails");
    let tokens = d.cli(&["tokens"]);
    assert_eq!(tokens[0]["state"], "session-ended", "{tokens}");
    let status = d.cli(&["status"]);
    // Two sessions ended: the fetcher's and the `agentid token fetch` process's own.
    assert_eq!(status["issuer"]["retired_keys"], 2, "{status}");

    // Canary: the token itself is nowhere the daemon writes or answers.
    let dir = sock.parent().expect("dir").to_owned();
    assert_canary(d, &dir, &token, &c, &[&tokens, &status]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The token is in no answer, not in the log, not in any file of the daemon's (store,
/// audit log, alerts); the audit log has its issuance by jti.
fn assert_canary(d: Daemon, dir: &Path, token: &str, c: &Value, answers: &[&Value]) {
    let secret = token.split('.').nth(2).expect("signature").to_owned();
    let log = d.log_text();
    assert!(!log.contains(&secret), "the token is in the daemon's log");
    for a in answers {
        assert!(
            !a.to_string().contains(&secret),
            "the token is in an answer"
        );
    }
    drop(d);
    let jti = c["jti"].as_str().expect("jti");
    let audited = walk(&dir.join("state").join("audit")).iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| t.contains("token-issued") && t.contains(jti))
    });
    assert!(audited, "no token-issued audit record with jti {jti}");
    for file in walk(dir) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the token is in {}",
            file.display()
        );
    }
}

/// `agentid token fetch` run as a new process of the cgroup's agent: the token's claims.
fn cli_fetch(cg: &TestCgroup, sock: &Path, aud: &str) -> Value {
    let out = cg
        .command(agentid_tests::agentid_bin())
        .args(["token", "fetch", "--aud", aud, "--workload-socket"])
        .arg(sock)
        .output()
        .expect("agentid token fetch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = claims(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(c["aud"], serde_json::json!([aud]), "{c}");
    c
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

/// py-spiffe, a client generated from the published proto, fetches and validates a token
/// for its agent (the interop check), and the token names that agent.
#[test]
fn py_spiffe_fetches_and_validates() {
    let cg = TestCgroup::new("iss-py");
    let Some((d, sock)) = issuer_daemon("issuer-py", &[("iss-py", &cg)]) else {
        return;
    };
    let py = Fetcher::python(&cg, &sock, "api.example");
    let token = py.token().to_owned();
    assert_eq!(py.line["validated"], agent_id("iss-py"), "{}", py.line);
    let c = claims(&token);
    assert_eq!(c["sub"], agent_id("iss-py"), "{c}");
    assert_eq!(c["aud"], serde_json::json!(["api.example"]), "{c}");
    assert!(
        c["sid"].as_str().is_some_and(|s| s.starts_with("iss-py/")),
        "{c}"
    );
    py.end();
    let dir = sock.parent().expect("dir").to_owned();
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SPIRE pid-reuse attack: a process connects, hands the connection to a child and
/// exits, so its pid may be anyone's; the child asks on the inherited connection while
/// the session is still live. Refused: the connector is gone. A caller the test's own
/// process (unregistered) is refused too (above); here the caller is an agent's process.
#[test]
fn a_connection_outliving_its_connector_gets_nothing() {
    let cg = TestCgroup::new("iss-orphan");
    let Some((d, sock)) = issuer_daemon("issuer-orphan", &[("iss-orphan", &cg)]) else {
        return;
    };
    let mut cmd = cg.command(WORKLOAD);
    cmd.arg("jwt-orphan").arg(&sock).arg("db.example");
    let orphan = Fetcher::spawn(cmd, &sock);
    assert_eq!(orphan.line["code"], "PermissionDenied", "{}", orphan.line);
    let log = d.log_text();
    assert!(
        log.contains("is gone: its pid may be another process's now"),
        "refused for the connector's exit, not for another reason:\n{log}"
    );
    orphan.end();
    let tokens = d.cli(&["tokens"]);
    assert_eq!(
        tokens,
        serde_json::json!([]),
        "nothing was issued: {tokens}"
    );
    let dir = sock.parent().expect("dir").to_owned();
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A's session as a shell: it fetches a token with `agentid token fetch` (a child, so
/// the same session), uses it itself in a child's environment, prints it, and lives
/// until its stdin closes.
const SESSION_SH: &str = r#"set -e
TOKEN=$("$AGENTID" token fetch --aud db.example --workload-socket "$SOCK")
SVID="$TOKEN" /bin/true
printf '{"token":"%s"}\n' "$TOKEN"
read -r _ || true
"#;

/// The same JWS with its ECDSA signature's `s` replaced by `n − s` (P-256's order `n`):
/// as valid as the original, to a validator that does not insist on low `s`.
fn malleated(token: &str) -> String {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let (signed, sig) = token.rsplit_once('.').expect("a JWS");
    let mut sig = URL_SAFE_NO_PAD.decode(sig).expect("base64url");
    assert_eq!(sig.len(), 64, "an ES256 signature is r || s");
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(sig[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        sig[32 + i] = u8::try_from(d.rem_euclid(256)).expect("a byte");
    }
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Incidents of `rule` in an `alerts` answer.
fn incidents<'a>(alerts: &'a Value, rule: &str) -> Vec<&'a Value> {
    alerts
        .as_array()
        .map(|a| a.iter().filter(|x| x["rule"] == rule).collect())
        .unwrap_or_default()
}

/// Certain detection of agentid's own tokens: A's token used by A's own session is
/// silent; handed to agent B (its environment) it is exactly one `issued-token-transfer`
/// naming A's session and B; used after A's session ended (an argument) it is
/// `credential-stale` with `reason: session-ended`. The token is in none of the daemon's
/// files, its log or its answers.
#[test]
fn a_token_handed_to_another_agent_is_a_transfer_and_after_its_session_stale() {
    let cg_a = TestCgroup::new("iss-ta");
    let cg_b = TestCgroup::new("iss-tb");
    let Some((d, sock)) = issuer_daemon("issuer-transfer", &[("iss-ta", &cg_a), ("iss-tb", &cg_b)])
    else {
        return;
    };
    let mut cmd = cg_a.command("/bin/sh");
    cmd.arg("-c")
        .arg(SESSION_SH)
        .env("AGENTID", agentid_tests::agentid_bin())
        .env("SOCK", &sock);
    let session = Fetcher::spawn(cmd, &sock);
    let token = session.token().to_owned();
    let c = claims(&token);
    let sid = c["sid"].as_str().expect("sid").to_owned();
    assert_eq!(c["sub"], agent_id("iss-ta"), "{c}");
    // exp is iat + ttl: no session deadline is known in advance (see the README).
    assert_eq!(
        c["exp"].as_u64().expect("exp") - c["iat"].as_u64().expect("iat"),
        300,
        "{c}"
    );

    // B holds A's token in its environment.
    let started = Instant::now();
    let status = cg_b
        .command("/bin/true")
        .env("SVID", &token)
        .status()
        .expect("B's exec");
    assert!(status.success());
    let alerts = d.cli_until(&["alerts", "--rule", "issued-token-transfer"], |v| {
        !incidents(v, "issued-token-transfer").is_empty()
    });
    eprintln!("issued-token-transfer after {:?}", started.elapsed());
    let transfers = incidents(&alerts, "issued-token-transfer");
    // A's own use (its child, before it printed the token) raised nothing: only B's.
    assert_eq!(transfers.len(), 1, "{alerts:#}");
    let t = transfers[0];
    assert_eq!(t["severity"], "high", "{t:#}");
    assert_eq!(t["agents"][0]["id"], agent_id("iss-ta"), "{t:#}");
    assert_eq!(t["agents"][0]["session"], sid, "{t:#}");
    assert_eq!(t["agents"][1]["id"], agent_id("iss-tb"), "{t:#}");
    let origin = &t["evidence"]["credential"]["token"];
    assert_eq!(origin["jti"], c["jti"], "{t:#}");
    assert_eq!(origin["session"], sid, "{t:#}");
    assert!(
        t["description"]
            .as_str()
            .is_some_and(|s| s.contains("env:SVID")),
        "{t:#}"
    );
    assert_eq!(
        incidents(
            &d.cli(&["alerts", "--rule", "credential-reuse"]),
            "credential-reuse"
        )
        .len(),
        0,
        "the transfer is not reported again as reuse"
    );

    // Evasion: B rewrites the token into another valid form (the ECDSA `s` as `n − s`):
    // other bytes, other fingerprint, the same signature's worth — still A's token.
    let other = malleated(&token);
    assert_ne!(other, token);
    let status = cg_b
        .command("/bin/true")
        .env("SVID", &other)
        .status()
        .expect("B's exec with the rewritten token");
    assert!(status.success());
    let alerts = d.cli_until(&["alerts", "--rule", "issued-token-transfer"], |v| {
        incidents(v, "issued-token-transfer").len() == 2
    });
    assert!(
        incidents(&alerts, "issued-token-transfer")
            .iter()
            .all(|t| t["evidence"]["credential"]["token"]["jti"] == c["jti"]),
        "{alerts:#}"
    );

    // A's session ends; the token, used again (as an argument), is stale.
    session.end();
    d.cli_until(&["tokens"], |v| v[0]["state"] == "session-ended");
    let status = cg_a
        .command("/bin/true")
        .arg(format!("--token={token}"))
        .status()
        .expect("a late use");
    assert!(status.success());
    let stale = d.cli_until(&["alerts", "--rule", "credential-stale"], |v| {
        !incidents(v, "credential-stale").is_empty()
    });
    let s = incidents(&stale, "credential-stale")[0];
    assert_eq!(s["reason"], "session-ended", "{s:#}");
    assert_eq!(
        s["evidence"]["credential"]["token"]["jti"], c["jti"],
        "{s:#}"
    );
    let stale = presented_is_stale(&d, &sock, &token, &sid);

    let tokens = d.cli(&["tokens"]);
    let dir = sock.parent().expect("dir").to_owned();
    assert_canary(d, &dir, &token, &c, &[&tokens, &alerts, &stale]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The token presented to `ValidateJWTSVID` after its session ended (by the test process:
/// no agent): refused, and `credential-stale` naming the session. The `alerts` answer.
fn presented_is_stale(d: &Daemon, sock: &Path, token: &str, sid: &str) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(client(&rt, sock).validate_jwt_token("db.example", token))
        .expect_err("an ended session's token does not validate");
    let stale = d.cli_until(&["alerts", "--rule", "credential-stale"], |v| {
        incidents(v, "credential-stale").iter().any(|a| {
            a["evidence"]["credential"]["seen_as"] == serde_json::json!(["ValidateJWTSVID"])
        })
    });
    let presented = incidents(&stale, "credential-stale")
        .into_iter()
        .find(|a| a["evidence"]["credential"]["seen_as"][0] == "ValidateJWTSVID")
        .expect("the presentation's incident");
    assert_eq!(presented["reason"], "session-ended", "{presented:#}");
    assert_eq!(presented["agents"][0]["session"], sid, "{presented:#}");
    stale
}

/// A process two registrations claim (ambiguous) gets no token: `PermissionDenied`.
#[test]
fn an_ambiguous_caller_is_refused() {
    let cg = TestCgroup::new("iss-amb");
    let Some((d, sock)) =
        issuer_daemon("issuer-ambiguous", &[("iss-amb1", &cg), ("iss-amb2", &cg)])
    else {
        return;
    };
    let out = cg
        .command(agentid_tests::agentid_bin())
        .args(["token", "fetch", "--aud", "db.example", "--workload-socket"])
        .arg(&sock)
        .output()
        .expect("agentid token fetch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an ambiguous caller got a token");
    assert!(
        stderr.contains("PermissionDenied") || stderr.contains("ermission"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no token printed");
    let log = d.log_text();
    assert!(
        log.contains("matches several agents"),
        "refused as ambiguous, not for another reason:\n{log}"
    );
    assert_eq!(d.cli(&["tokens"]), serde_json::json!([]));
    let dir = sock.parent().expect("dir").to_owned();
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
