//! Userspace throughput without a kernel: ring-buffer records → decode → credential scan →
//! process table → attribution → detection, over an agent-like synthetic mix; and the
//! store's batching writer.
//!
//! `cargo bench -p agentid-user --bench pipeline` (`cargo xtask bench` runs it short and
//! reports events/s per core from criterion's estimates).
#![expect(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "benchmark setup: a failure is a failed run; synthetic sizes are small"
)]
#![expect(
    unused_crate_dependencies,
    reason = "the benchmark drives the `agentid` library with criterion: the package's other dependencies are the library's"
)]
use std::{
    fmt::Write as _,
    hint::black_box,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use agentid::{
    credentials::FingerprintKey,
    detect::Detector,
    pipeline::Pipeline,
    sensor::{Clock, decode},
    store::{Retention, Store, StoreOp},
};
use agentid_ebpf::{
    ARGV_LEN, ENV_LEN, ExecRecord, ExitRecord, FILENAME_LEN, ForkRecord, Header, SockRecord, kind,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// Above the kernel's `pid_max` (4194304): the table never falls back to `/proc`.
const PID_BASE: u32 = 5_000_000;
/// Processes per batch; each makes 8 events (fork, exec, 4 connects, 1 send, exit).
const PROCS: u32 = 1_250;
const EVENTS_PER_PROC: u32 = 8;

fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: the record ABI types are repr(C) without padding (checked in agentid-ebpf).
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

/// Fake cgroup tree: directory inodes are the cgroup ids the records carry.
struct Cgroups {
    _dir: std::path::PathBuf,
    root: std::path::PathBuf,
    ids: Vec<u64>,
}

fn cgroups() -> Cgroups {
    use std::os::unix::fs::MetadataExt as _;
    let dir = std::env::temp_dir().join(format!("agentid-bench-cg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut ids = Vec::new();
    // Four registered agents and one unregistered workload.
    for name in ["bot-0", "bot-1", "bot-2", "bot-3", "other"] {
        let d = dir.join("agents").join(name);
        std::fs::create_dir_all(&d).unwrap();
        ids.push(std::fs::metadata(&d).unwrap().ino());
    }
    Cgroups {
        root: dir.clone(),
        _dir: dir,
        ids,
    }
}

fn registry() -> agentid::identity::Registry {
    let mut text = String::new();
    for i in 0..4 {
        let _ = write!(
            text,
            "[[agent]]\nid = \"spiffe://bench.example/agent/bot-{i}\"\nname = \"bot-{i}\"\n\
             owner = \"bench@example.org\"\n[[agent.selectors]]\ncgroup = \"/agents/bot-{i}\"\n"
        );
    }
    let r = agentid::identity::Registry::parse_str(&text, "bench.toml");
    assert!(r.errors().is_empty(), "{:?}", r.errors());
    r
}

/// Generates successive batches of records, with fresh pids and advancing clocks.
struct Gen {
    cgroups: Vec<u64>,
    next_pid: u32,
    ktime: u64,
}

impl Gen {
    fn header(&mut self, kind: u32, pid: u32, cgroup_id: u64, comm: &[u8]) -> Header {
        self.ktime += 10_000;
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        Header {
            kind,
            reserved: 0,
            ktime_ns: self.ktime,
            tgid: pid,
            tid: pid,
            uid: 1000,
            gid: 1000,
            cgroup_id,
            comm: c,
        }
    }

    /// One long-lived root per cgroup (the agent's main process), exec'd before the mix as
    /// the daemon would have seeded it from `/proc`: a fork from a parent the table has
    /// never seen costs a failed `/proc` read, which is not what a real host does.
    fn roots(&mut self) -> Vec<Vec<u8>> {
        (0..5u32)
            .map(|i| {
                let pid = PID_BASE + i;
                let cg = self.cgroups[i as usize];
                let file = b"/usr/bin/agent";
                let mut r = ExecRecord {
                    header: self.header(kind::EXEC, pid, cg, b"agent"),
                    ppid: 1,
                    argc: 1,
                    argv_len: 6,
                    filename_len: file.len() as u32,
                    flags: 0,
                    loginuid: u32::MAX,
                    start_ns: self.ktime,
                    envc: 0,
                    env_len: 0,
                    argv_total: 0,
                    env_total: 0,
                    filename: [0; FILENAME_LEN],
                    argv: [0; ARGV_LEN],
                    env: [0; ENV_LEN],
                };
                r.filename[..file.len()].copy_from_slice(file);
                r.argv[..5].copy_from_slice(b"agent");
                bytes_of(&r)
            })
            .collect()
    }

    fn batch(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity((PROCS * EVENTS_PER_PROC) as usize);
        let tools: [(&[u8], &[&[u8]]); 4] = [
            (
                b"/usr/bin/curl",
                &[b"curl", b"-s", b"https://api.example.com/v1/chat"],
            ),
            (b"/usr/bin/git", &[b"git", b"status", b"--short"]),
            (b"/usr/bin/python3", &[b"python3", b"-c", b"print(1)"]),
            (b"/bin/ls", &[b"ls", b"-la", b"/tmp"]),
        ];
        for i in 0..PROCS {
            // Wrap before the pid space runs out; the table sees old pids reused then.
            if self.next_pid > PID_BASE + 3_000_000 {
                self.next_pid = PID_BASE + 10;
            }
            // Each cgroup's long-lived root (see `roots`) forks the tool into its own cgroup.
            let parent = PID_BASE + (i % 5);
            let pid = self.next_pid;
            self.next_pid += 1;
            let cg = self.cgroups[(i % 5) as usize];
            let start = self.ktime;
            out.push(bytes_of(&ForkRecord {
                header: self.header(kind::FORK, pid, cg, b"agent"),
                parent_tgid: parent,
                child_tgid: pid,
                child_start_ns: start,
            }));
            let (file, args) = tools[(i % 4) as usize];
            let mut r = ExecRecord {
                header: self.header(kind::EXEC, pid, cg, &file[file.len() - 4..]),
                ppid: parent,
                argc: args.len() as u32,
                argv_len: 0,
                filename_len: file.len() as u32,
                flags: 0,
                loginuid: u32::MAX,
                start_ns: start,
                envc: 0,
                env_len: 0,
                argv_total: 0,
                env_total: 0,
                filename: [0; FILENAME_LEN],
                argv: [0; ARGV_LEN],
                env: [0; ENV_LEN],
            };
            r.filename[..file.len()].copy_from_slice(file);
            let mut off = 0;
            for a in args {
                r.argv[off..off + a.len()].copy_from_slice(a);
                off += a.len() + 1;
            }
            r.argv_len = off as u32;
            // Agents' environments; one exec in eleven carries its agent's own API key (a
            // credential sighting; reuse across agents is the rare anomaly, not the mix).
            let keyed = format!(
                "HOME=/home/bot\0PATH=/usr/bin:/bin\0LANG=C.UTF-8\0OPENAI_API_KEY=sk-proj-Ben3chFakeKey{}Q7x9Lm2Np4Rt6Vw8Yz0a1b2c3\0",
                i % 5
            );
            let env: &[u8] = if i % 11 == 0 {
                keyed.as_bytes()
            } else {
                b"HOME=/home/bot\0PATH=/usr/bin:/bin\0LANG=C.UTF-8\0TERM=xterm\0"
            };
            r.env[..env.len()].copy_from_slice(env);
            r.env_len = env.len() as u32;
            r.envc = env.split_inclusive(|b| *b == 0).count() as u32;
            out.push(bytes_of(&r));
            for j in 0..5u16 {
                let udp = j == 4;
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&[10, 0, (i % 200) as u8, (j + 1) as u8]);
                out.push(bytes_of(&SockRecord {
                    header: self.header(
                        if udp { kind::SEND } else { kind::CONNECT },
                        pid,
                        cg,
                        b"curl",
                    ),
                    family: 2,
                    protocol: if udp { 17 } else { 6 },
                    port: if udp { 53 } else { 443 },
                    flags: 0,
                    addr,
                }));
            }
            out.push(bytes_of(&ExitRecord {
                header: self.header(kind::EXIT, pid, cg, b"curl"),
                status: 0,
                reserved: 0,
                start_ns: start,
            }));
        }
        out
    }
}

fn pipeline(c: &mut Criterion) {
    let cg = cgroups();
    let registry = Arc::new(registry());
    let mut pipeline = Pipeline::new(
        Arc::clone(&registry),
        cg.root.clone(),
        FingerprintKey::ephemeral().unwrap(),
    );
    let mut detector = Detector::new(None);
    detector.set_registry(&registry);
    let clock = Clock::now();
    let mut generator = Gen {
        cgroups: cg.ids.clone(),
        next_pid: PID_BASE + 10,
        ktime: 1_000_000_000,
    };
    for bytes in generator.roots() {
        let event = decode(&bytes, &clock).unwrap();
        let _ = pipeline.process(event);
    }
    // The mix is what it claims: four of the five cgroups belong to registered agents.
    let warm = generator.batch();
    let attributed = warm
        .iter()
        .filter(|bytes| {
            let event = decode(bytes, &clock).unwrap();
            pipeline.process(event).0.agent.is_some()
        })
        .count();
    assert!(
        attributed * 5 >= warm.len() * 4 - warm.len() / 10,
        "only {attributed} of {} synthetic events were attributed",
        warm.len()
    );
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(u64::from(PROCS * EVENTS_PER_PROC)));
    group.bench_function("decode_attribute_detect", |b| {
        b.iter_batched(
            || generator.batch(),
            |records| {
                for bytes in &records {
                    let event = decode(bytes, &clock).unwrap();
                    let (attributed, findings) = pipeline.process(event);
                    let out = detector.observe(&attributed, &findings, pipeline.registry());
                    black_box((&attributed, out));
                }
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

const STORE_BATCH: u32 = 20_000;

fn store(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("agentid-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("agentid.db")).unwrap();
    let writer = store
        .writer(Retention {
            max_age: Duration::from_hours(24),
            max_bytes: 1 << 40,
        })
        .unwrap();
    let body = r#"{"kind":"connect","time":"2026-11-28T13:33:35.111940286Z","pid":5000123,"ppid":null,"tid":5000123,"uid":1000,"gid":1000,"cgroup_id":405,"cgroup":"/agents/bot-1","comm":"curl","dst_ip":"10.0.3.1","dst_port":443,"protocol":"tcp","agent":{"id":"spiffe://bench.example/agent/bot-1","name":"bot-1","owner":"bench@example.org"},"session":"s-5000003-1","exec_id":"aGVsbG8td29ybGQtZXhlYy1pZA","lineage":["aGVsbG8td29ybGQtZXhlYy1pZA"]}"#;
    // As the daemon hands it over: parsed once, shared by every output.
    let body_value = serde_json::from_str::<serde_json::Value>(body).unwrap();
    let body_text: Arc<str> = agentid::audit::canonical(&body_value).into();
    let mut ts = UNIX_EPOCH.elapsed().unwrap().as_nanos() as u64;
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(u64::from(STORE_BATCH)));
    group.sample_size(10);
    group.bench_function("writer", |b| {
        b.iter(|| {
            for i in 0..STORE_BATCH {
                ts += 1_000;
                writer.send(StoreOp::Event {
                    ts_ns: ts,
                    kind: "connect",
                    pid: PID_BASE + i,
                    exec_id: Some("aGVsbG8td29ybGQtZXhlYy1pZA".into()),
                    agent: Some(format!("spiffe://bench.example/agent/bot-{}", i % 4)),
                    session: Some(format!("s-{}", i % 64)),
                    root_exec_id: Some("aGVsbG8td29ybGQtZXhlYy1pZA".into()),
                    body: Arc::clone(&body_text),
                    split: agentid::store::split_value(&body_value, ts, "connect", PID_BASE + i),
                });
            }
            writer.flush().unwrap();
        });
    });
    group.finish();
    let dropped = writer
        .stats
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        dropped, 0,
        "the writer's queue overflowed: throughput would be wrong"
    );
    drop(writer);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, pipeline, store);
criterion_main!(benches);
