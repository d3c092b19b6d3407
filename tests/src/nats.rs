//! A 3-node `nats-server` JetStream cluster on 127.0.0.1 (free ports, its own store dirs),
//! for the fleet tests: nodes can be killed and started again on the same ports and dirs;
//! everything is killed and removed on drop, also when a test fails.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    route_port: u16,
    http_port: u16,
    child: Option<Child>,
}

#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    nodes: Vec<Node>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` on 127.0.0.1:port (HTTP/1.0): the body, or `None` if nothing answered.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// Whether `nats-server` is installed (`scripts/setup.sh` installs it).
pub fn available() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Cluster {
    /// Starts three nodes and waits (bounded) until JetStream has a meta leader.
    pub fn start(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("agentid-nats-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let nodes = (1..=3)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                route_port: free_port(),
                http_port: free_port(),
                child: None,
            })
            .collect();
        let mut c = Self { dir, nodes };
        for i in 0..3 {
            c.spawn(i);
        }
        c.wait_ready();
        c
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.route_port))
            .collect();
        let n = &self.nodes[i];
        let store = self.dir.join(&n.name);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", n.name))).expect("log");
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-js",
                "-n",
                &n.name,
                "--cluster_name",
                "agentid-test",
            ])
            .args(["-p", &n.port.to_string(), "-m", &n.http_port.to_string()])
            .arg("-sd")
            .arg(&store)
            .args(["--cluster", &format!("nats://127.0.0.1:{}", n.route_port)])
            .args(["--routes", &routes.join(",")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.nodes[i].child = Some(child);
    }

    /// Kills node `i` (SIGKILL: no goodbye to its peers).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    fn alive(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// Every live node healthy and agreeing on a JetStream meta leader (60 s at most).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let ready = self.alive().all(|n| {
                http_get(n.http_port, "/healthz").is_some_and(|b| b.contains("\"ok\""))
                    && http_get(n.http_port, "/jsz")
                        .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                        .is_some_and(|v| v["meta_cluster"]["leader"].is_string())
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the NATS cluster in {} never became ready (see its n*.log)",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node leading `stream`'s replicas, as a live node reports it.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        let leader = self.alive().find_map(|n| {
            let v: Value =
                serde_json::from_str(&http_get(n.http_port, "/jsz?accounts=true&streams=true")?)
                    .ok()?;
            v["account_details"]
                .as_array()?
                .iter()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|s| s["name"] == stream)
                .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_owned))
        })?;
        self.nodes.iter().position(|n| n.name == leader)
    }

    /// Publishes `payload` on `subject` as any NATS client could (the raw protocol, no
    /// agentid code) and waits (bounded) for JetStream's ack: the stored message's
    /// stream sequence.
    pub fn publish(&self, subject: &str, payload: &str) -> u64 {
        use std::io::BufRead as _;
        let port = self.alive().next().expect("a live node").port;
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to NATS");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line).expect("INFO");
        write!(
            w,
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB _INBOX.test 1\r\nPUB {subject} _INBOX.test {}\r\n{payload}\r\n",
            payload.len()
        )
        .expect("publish");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            line.clear();
            r.read_line(&mut line)
                .expect("no ack from JetStream within 10 s");
            if line.starts_with("PING") {
                w.write_all(b"PONG\r\n").expect("pong");
            } else if line.starts_with("MSG _INBOX.test") {
                line.clear();
                r.read_line(&mut line).expect("ack body");
                let ack: Value = serde_json::from_str(line.trim()).expect("ack JSON");
                return ack["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("JetStream refused {subject}: {ack}"));
            } else if line.starts_with("-ERR") {
                panic!("NATS refused the publish on {subject}: {line}");
            }
            assert!(Instant::now() < deadline, "no ack for {subject}");
        }
    }

    /// Every byte of every node's store.
    pub fn store_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(b) = std::fs::read(&path) {
                    out.push((path, b));
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
