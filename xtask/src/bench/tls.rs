//! TLS client overhead (the request uprobes): the same keep-alive HTTPS loops with no
//! tracer and under agentid, for a client in a registered agent's cgroup and for one in an
//! unregistered cgroup (the uprobe trap and the cgroup filter only), interleaved across
//! repetitions. The programs' own time per call comes from the kernel's BPF statistics, so
//! the rest of the difference is the uprobe mechanism (trap, single-step) and the exec/open
//! capture around the client.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Ctx,
    stats::{Summary, f, ratio},
    sys::{self, BenchCgroup, Daemon},
};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Requests per client loop.
    pub requests: u32,
    pub reps: usize,
}

/// The agentid programs the loops hit (names as the kernel keeps them).
const PROGRAMS: [&str; 2] = ["tls_write", "h2_request"];

/// A loopback HTTPS server (Python `http.server` over `ssl`, HTTP/1.1 keep-alive) on a
/// throwaway self-signed certificate; killed on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    port: u16,
}

const SERVER_PY: &str = r"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    # One response is two small writes: without this, Nagle and delayed ACKs hold each
    # keep-alive round trip for 40 ms.
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200); self.send_header('Content-Length', '3'); self.end_headers()
        self.wfile.write(b'ok\n')
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1] + '/cert.pem', sys.argv[1] + '/key.pem')
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
";

impl Server {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=api.openai.com"])
            .args(["-addext", "subjectAltName=DNS:api.openai.com"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .output()
            .context("running openssl req")?;
        if !out.status.success() {
            bail!(
                "openssl req: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut child = Command::new("python3")
            .args(["-c", SERVER_PY])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the TLS server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = Self {
            child,
            dir: dir.to_owned(),
            port: 0,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .context("the TLS server never said its port")?;
        server.port = line.trim().parse().context("the TLS server's port")?;
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A keep-alive loop in Python (`http.client`, `SSL_write_ex`) timed by the client itself
/// (its interpreter start excluded), then one curl run over HTTP/1.1 (`SSL_write`) with as
/// many URLs, timed whole. Prints both CPU times in seconds.
const CLIENT_PY: &str = r#"
import http.client, resource, ssl, subprocess, sys
cert, port, n, cfg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context(cafile=cert)
c = http.client.HTTPSConnection('api.openai.com', port, context=ctx, timeout=10)
import socket
c._create_connection = lambda addr, timeout, src: socket.create_connection(('127.0.0.1', port), timeout)
r0 = resource.getrusage(resource.RUSAGE_SELF)
for i in range(n):
    c.request('GET', '/v1/models?page=%d' % i, headers={'authorization': 'Bearer bench-token-not-secret'})
    c.getresponse().read()
r1 = resource.getrusage(resource.RUSAGE_SELF)
with open(cfg, 'w') as f:
    for i in range(n):
        f.write('url = "https://api.openai.com:%d/v1/models"\noutput = "/dev/null"\n' % port)
subprocess.run(['curl', '-sS', '--http1.1', '--cacert', cert, '--resolve', 'api.openai.com:%d:127.0.0.1' % port,
                '-H', 'Authorization: Bearer bench-token-not-secret', '-K', cfg], check=True, timeout=300)
r2 = resource.getrusage(resource.RUSAGE_CHILDREN)
print((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime), r2.ru_utime + r2.ru_stime)
"#;

/// (Python loop, curl run) client CPU seconds.
fn client(cg: &BenchCgroup, server: &Server, n: u32) -> anyhow::Result<(f64, f64)> {
    let out = cg
        .command("timeout")
        .args(["600", "python3", "-c", CLIENT_PY])
        .arg(server.dir.join("cert.pem"))
        .arg(server.port.to_string())
        .arg(n.to_string())
        .arg(server.dir.join("curl.cfg"))
        .stdin(Stdio::null())
        .output()
        .context("running the TLS client")?;
    if !out.status.success() {
        bail!(
            "TLS client failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    match (it.next(), it.next()) {
        (Some(Ok(py)), Some(Ok(curl))) => Ok((py, curl)),
        _ => bail!("TLS client printed {text:?}"),
    }
}

/// Which clients ran in a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cond {
    NoTracer,
    Unregistered,
    Registered,
}

impl Cond {
    fn name(self) -> &'static str {
        match self {
            Self::NoTracer => "no tracer",
            Self::Unregistered => "agentid, unregistered client",
            Self::Registered => "agentid, registered agent",
        }
    }
}

#[derive(Default)]
struct Samples {
    python: BTreeMap<Cond, Vec<f64>>,
    curl: BTreeMap<Cond, Vec<f64>>,
    /// ns per program call while the registered client ran, per program.
    program_ns: BTreeMap<&'static str, Vec<f64>>,
    /// `request` events the daemon counted per registered run (2 × requests expected).
    requests_seen: Vec<u64>,
}

impl Samples {
    fn push(&mut self, cond: Cond, (py, curl): (f64, f64)) {
        self.python.entry(cond).or_default().push(py);
        self.curl.entry(cond).or_default().push(curl);
    }
}

/// One daemon run: the unregistered and the registered client, in `order`.
fn under_agentid(
    ctx: &Ctx,
    server: &Server,
    (agent, other): (&BenchCgroup, &BenchCgroup),
    sizes: Sizes,
    registered_first: bool,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let mut d = Daemon::start(
        &ctx.agentid,
        &ctx.scratch.join("tls"),
        &[("bench-tls", &agent.rel)],
        None,
    )?;
    // The kernel counts run time only while someone holds this descriptor.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let order = if registered_first {
        [Cond::Registered, Cond::Unregistered]
    } else {
        [Cond::Unregistered, Cond::Registered]
    };
    for cond in order {
        let before = sys::program_stats(&PROGRAMS);
        let seen_before = requests(&d)?;
        let cg = if cond == Cond::Registered {
            agent
        } else {
            other
        };
        samples.push(cond, client(cg, server, sizes.requests)?);
        d.check_alive()?;
        if cond == Cond::Registered {
            let after = sys::program_stats(&PROGRAMS);
            for p in PROGRAMS {
                let (t0, c0) = before.get(p).copied().unwrap_or_default();
                let (t1, c1) = after.get(p).copied().unwrap_or_default();
                if c1 > c0 {
                    samples
                        .program_ns
                        .entry(p)
                        .or_default()
                        .push(f(t1 - t0) / f(c1 - c0));
                }
            }
            samples.requests_seen.push(requests(&d)? - seen_before);
        }
    }
    drop(stats);
    d.stop()
}

/// `request` events the daemon has counted.
fn requests(d: &Daemon) -> anyhow::Result<u64> {
    Ok(d.cli(&["status"])?["events"]["request"]
        .as_u64()
        .unwrap_or(0))
}

pub(crate) fn run(ctx: &Ctx, sizes: Sizes) -> anyhow::Result<Value> {
    let server = Server::start(&ctx.scratch.join("tls-server"))?;
    let agent = BenchCgroup::new("tls-agent")?;
    let other = BenchCgroup::new("tls-other")?;
    let mut samples = Samples::default();
    // Warm-up (page cache, Python's bytecode cache), not counted.
    client(&other, &server, sizes.requests.min(200))?;
    for rep in 0..sizes.reps {
        // ABBA order, so a drift over the run hits both sides alike.
        let tracer_first = rep % 2 == 1;
        if !tracer_first {
            samples.push(Cond::NoTracer, client(&other, &server, sizes.requests)?);
        }
        under_agentid(
            ctx,
            &server,
            (&agent, &other),
            sizes,
            rep % 4 < 2,
            &mut samples,
        )?;
        if tracer_first {
            samples.push(Cond::NoTracer, client(&other, &server, sizes.requests)?);
        }
    }
    Ok(report(sizes, &samples))
}

fn report(sizes: Sizes, s: &Samples) -> Value {
    let n = f(u64::from(sizes.requests));
    let client = |by: &BTreeMap<Cond, Vec<f64>>| {
        let base = by
            .get(&Cond::NoTracer)
            .and_then(|v| Summary::of(v))
            .map(|s| s.median);
        let conds: serde_json::Map<String, Value> = by
            .iter()
            .map(|(c, v)| {
                let sum = Summary::of(v);
                let med = sum.map(|s| s.median);
                (
                    c.name().to_owned(),
                    json!({
                        "cpu_s": sum.map(|s| s.json()),
                        "ratio": ratio(med, base),
                        // Client CPU added per request over no tracer.
                        "extra_us_per_request": med.zip(base).map(|(m, b)| (m - b) / n * 1e6),
                    }),
                )
            })
            .collect();
        Value::Object(conds)
    };
    let programs: serde_json::Map<String, Value> = s
        .program_ns
        .iter()
        .map(|(p, v)| ((*p).to_owned(), json!(Summary::of(v).map(|s| s.json()))))
        .collect();
    json!({
        "requests_per_loop": sizes.requests,
        "reps": sizes.reps,
        "python_http_client": client(&s.python),
        "curl_http1": client(&s.curl),
        "program_ns_per_call": programs,
        "request_events_per_registered_run": s.requests_seen,
    })
}
