//! Prometheus metrics, end to end: the real daemon serves `/metrics` on loopback, a real
//! `prometheus` (Debian's, installed by `scripts/setup.sh`) scrapes it, and the test asks
//! Prometheus's HTTP API for a value it caused: the execs of its own agent's processes.
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agentid_tests::{
    TestCgroup,
    daemon::{Daemon, registration},
};
use serde_json::Value;

/// How many processes the agent's shell starts.
const N: u64 = 7;

/// A loopback port nobody listens on now (the kernel's pick; released for the server).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `GET path` over HTTP/1.0 (the server closes the connection: the body is the rest):
/// status and body, or the connection error.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Removes the test's directory when the test ends, however it ends (declared first, so
/// dropped after the servers writing into it).
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real Prometheus on loopback scraping `target` every second, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(dir: &Path, target: SocketAddr) -> Self {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: agentid\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus config");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).expect("prometheus log"))
            .spawn()
            .expect("prometheus (apt install prometheus; scripts/setup.sh does)");
        let mut p = Self { child, addr };
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                return p;
            }
            let exited = p.child.try_wait().expect("wait prometheus");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "prometheus not ready ({exited:?}); its log:\n{}",
                std::fs::read_to_string(dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls an instant query until one series' value is `want` (deadline 60 s).
    fn await_value(&self, query: &str, want: u64) {
        let path = format!("/api/v1/query?query={}", url_encode(query));
        let deadline = Instant::now() + Duration::from_mins(1);
        let mut last = String::new();
        loop {
            if let Ok((200, body)) = http_get(self.addr, &path) {
                let v: Value = serde_json::from_str(&body).expect("prometheus JSON");
                let values: Vec<&str> = v["data"]["result"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["value"][1].as_str())
                    .collect();
                if values == [want.to_string().as_str()] {
                    return;
                }
                last = body;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus never answered {query} = {want}; last answer: {last}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A daemon with `/metrics` on a free loopback port and one agent: `cg`'s.
fn daemon(test: &str, cg: &TestCgroup) -> Option<(Daemon, SocketAddr)> {
    let dir = Daemon::dir(test);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = dir.join("agentid.toml");
    let base = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{base}metrics_listen = \"{addr}\"\n")).expect("config");
    std::fs::write(dir.join("agents/bot.toml"), registration(test, cg)).expect("registration");
    Daemon::start(&dir).map(|d| (d, addr))
}

/// The agent: a shell in `cg` that starts `N` processes (`[` and the loop are built in),
/// after running `before` (shell code).
fn run_agent(cg: &TestCgroup, before: &str, env: &[(&str, &str)], args: &[&str]) {
    let script = format!("{before}i=0; while [ $i -lt {N} ]; do /bin/true; i=$((i+1)); done");
    let status = cg
        .command("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("agent")
        .args(args)
        .envs(env.iter().copied())
        .status()
        .expect("agent shell");
    assert!(status.success(), "agent: {status}");
}

/// One sample's value from the exposition text (`series` as written, labels included).
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `/metrics` until `series` has a value `want` accepts (the daemon copies its
/// counters once a second); returns that scrape.
fn await_sample(addr: SocketAddr, series: &str, want: impl Fn(u64) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let (status, body) = http_get(addr, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        if sample(&body, series).is_some_and(&want) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached the value awaited; last scrape:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn prometheus_scrapes_the_execs_the_test_caused() {
    let cg = TestCgroup::new("metrics-prom");
    let Some((d, addr)) = daemon("metrics-prom", &cg) else {
        return;
    };
    let _cleanup = DirGuard(d.dir.clone());
    let prometheus = Prometheus::start(&d.dir, addr);
    prometheus.await_value("up{job=\"agentid\"}", 1);
    run_agent(&cg, "", &[], &[]);
    // The shell's exec and its N children's: every one attributed to the only agent.
    prometheus.await_value("agentid_events_attributed_total{kind=\"exec\"}", N + 1);
    prometheus.await_value("agentid_agents_registered", 1);
    drop(prometheus);
    assert!(d.stop().success());
}

/// The direct text, and what must not be in it: the agent's secret (planted in its
/// environment and arguments), its SPIFFE ID, its cgroup.
#[test]
fn metrics_text_counts_the_agent_and_carries_no_secret() {
    let cg = TestCgroup::new("metrics-text");
    let Some((d, addr)) = daemon("metrics-text", &cg) else {
        return;
    };
    let _cleanup = DirGuard(d.dir.clone());
    let nonce = std::process::id();
    let env_secret = format!("sk-proj-CANARYmetrics{nonce}Q7x9Lm2Np4Rt6Vw8Yz");
    let arg_secret = format!("CANARYmetricsarg{nonce}pw");
    run_agent(
        &cg,
        "",
        &[("OPENAI_API_KEY", &env_secret)],
        &[&format!("--password={arg_secret}")],
    );
    let (status, _) = http_get(addr, "/nothing").expect("GET /nothing");
    assert_eq!(status, 404);
    let text = await_sample(
        addr,
        "agentid_events_attributed_total{kind=\"exec\"}",
        |n| n == N + 1,
    );
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert_eq!(sample(&text, "agentid_agents_registered"), Some(1));
    assert_eq!(sample(&text, "agentid_store_degraded"), Some(0));
    assert_eq!(sample(&text, "agentid_audit_degraded"), Some(0));
    assert!(
        sample(&text, "agentid_events_total{kind=\"exec\"}").is_some_and(|n| n > N),
        "{text}"
    );
    assert!(sample(&text, "agentid_ringbuf_size_bytes").is_some_and(|n| n > 0));
    // Running as root is undeclared: the alert shows by rule and severity.
    let text = await_sample(
        addr,
        "agentid_alerts_total{rule=\"human-privilege\",severity=\"medium\"}",
        |n| n >= 1,
    );
    for secret in [&env_secret, &arg_secret, &"CANARYmetrics".to_owned()] {
        assert!(
            !text.contains(secret.as_str()),
            "secret in /metrics:\n{text}"
        );
    }
    assert!(
        !text.contains("spiffe://"),
        "agent ids are no labels:\n{text}"
    );
    assert!(
        !text.contains(&cg.rel),
        "cgroup paths are no labels:\n{text}"
    );
    assert!(d.stop().success());
}

/// The agent that does not want to be counted: it moves itself out of its cgroup into one
/// no agent's selectors match before starting its processes. They stay its work
/// (attributed), and the escape is an alert the metrics show.
#[test]
fn an_agent_leaving_its_cgroup_is_still_counted_and_the_escape_shows() {
    let cg = TestCgroup::new("metrics-escape");
    let elsewhere = TestCgroup::new("metrics-elsewhere");
    let Some((d, addr)) = daemon("metrics-escape", &cg) else {
        return;
    };
    let _cleanup = DirGuard(d.dir.clone());
    let leave = format!("echo $$ > {}/cgroup.procs; ", elsewhere.dir.display());
    run_agent(&cg, &leave, &[], &[]);
    let text = await_sample(
        addr,
        "agentid_events_attributed_total{kind=\"exec\"}",
        |n| n == N + 1,
    );
    let escapes = "agentid_alerts_total{rule=\"identity-escape\",severity=\"high\"}";
    if sample(&text, escapes).is_none_or(|n| n == 0) {
        await_sample(addr, escapes, |n| n >= 1);
    }
    assert!(d.stop().success());
}
