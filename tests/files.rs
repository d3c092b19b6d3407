//! Credential files by what was opened: the kernel names the inode an open reached, so a
//! human's credential file read through a symlink, a hard link, a bind mount, a relative
//! path or `/proc/self/fd/N` is the same file as by its own path — the moves an agent that
//! does not want to be seen would try. Real programs, real processes, a cgroup per test.
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    os::unix::fs::{chown, symlink},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use agentid::{
    attribution::AttributedEvent,
    cgroup,
    credentials::{Findings, FingerprintKey},
    detect::{Alert, Detector, Severity},
    event::{Detail, EventKind},
    identity::Registry,
    pipeline::Pipeline,
    sensor::Sensor,
};
use agentid_tests::{TestCgroup, sensor_or_skip};

const TIMEOUT: Duration = Duration::from_secs(30);
/// The uid owning the human's files (no such user needs to exist).
const HUMAN: u32 = 1001;
const AWS: &str = "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n\
                   aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n";

/// An agent selected by its cgroup, declared to run as root (so only file reads can make
/// `human-privilege`); `extra` is appended inside its `[[agent]]`.
fn reg(name: &str, cg: &TestCgroup, extra: &str) -> String {
    format!(
        "[[agent]]\nid = \"spiffe://test.example/agent/{name}\"\nname = \"{name}\"\n\
         [[agent.selectors]]\ncgroup = \"{}\"\nuid = 0\n{extra}\n",
        cg.rel
    )
}

/// One event as the pipeline saw it, with what the redactor found.
struct Seen {
    event: AttributedEvent,
    findings: Findings,
}

struct Rig {
    sensor: Sensor,
    pipeline: Pipeline,
    detector: Detector,
    registry: Arc<Registry>,
}

impl Rig {
    fn new(test: &str, registrations: &str, cgroups: &[&TestCgroup]) -> Option<Self> {
        let mut sensor = sensor_or_skip(test)?;
        for cg in cgroups {
            sensor.watch_opens(cg.id).expect("watch opens");
        }
        let registry = Registry::parse_str(registrations, "test.toml");
        assert!(registry.errors().is_empty(), "{:?}", registry.errors());
        let registry = Arc::new(registry);
        let mut pipeline = Pipeline::new(
            Arc::clone(&registry),
            cgroup::v2_root().expect("cgroup v2"),
            FingerprintKey::ephemeral().expect("key"),
        );
        pipeline.seed();
        let mut detector = Detector::new(None);
        detector.set_registry(&registry);
        Some(Self {
            sensor,
            pipeline,
            detector,
            registry,
        })
    }

    /// Runs events through scan → attribution → rules until `exits` processes of these
    /// cgroups have exited (every event of theirs is in by then).
    async fn run_until_exits(&mut self, cgroups: &[u64], exits: usize) -> (Vec<Seen>, Vec<Alert>) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let (mut seen, mut alerts) = (Vec::<Seen>::new(), Vec::new());
        let mut batch = Vec::new();
        while seen
            .iter()
            .filter(|s| s.event.event.kind == EventKind::Exit)
            .count()
            < exits
        {
            tokio::time::timeout_at(deadline, self.sensor.next_events(&mut batch))
                .await
                .expect("timed out waiting for the workloads to exit")
                .expect("ring buffer");
            for ev in batch.drain(..) {
                let (event, findings) = self.pipeline.process(ev);
                let out = self.detector.observe(&event, &findings, &self.registry);
                if cgroups.contains(&event.event.cgroup_id) {
                    alerts.extend(out.alerts);
                    seen.push(Seen { event, findings });
                }
            }
        }
        (seen, alerts)
    }
}

/// The credential file each open of `path` was recognised as (`None`: not one), and the
/// path it was reached through.
fn verdicts(seen: &[Seen], path: &str) -> Vec<Option<(PathBuf, Option<PathBuf>)>> {
    seen.iter()
        .filter(|s| matches!(&s.event.event.detail, Detail::Open { path: p, .. } if p == path))
        .map(|s| {
            s.findings
                .file
                .as_ref()
                .map(|f| (f.path.clone(), f.via.clone()))
        })
        .collect()
}

/// The last state of each `rule` incident (alerts update in place by uid).
fn incidents<'a>(alerts: &'a [Alert], rule: &str) -> Vec<&'a Alert> {
    let mut last = std::collections::BTreeMap::new();
    for a in alerts.iter().filter(|a| a.rule == rule) {
        last.insert(a.uid.as_str(), a);
    }
    last.into_values().collect()
}

/// Directories removed on drop (the test's home and scratch space), and a bind mount that
/// only ever exists inside a private mount namespace.
struct Scratch(Vec<PathBuf>);

impl Scratch {
    fn new(names: &[&str]) -> Self {
        let dirs: Vec<PathBuf> = names
            .iter()
            .map(|n| PathBuf::from(format!("{n}-{}", std::process::id())))
            .collect();
        for d in &dirs {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).expect("scratch dir");
        }
        Self(dirs)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Writes `content` to `path` owned by `uid`.
fn plant(path: &Path, content: &str, uid: u32) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
    std::fs::write(path, content).expect("write");
    chown(path, Some(uid), Some(uid)).expect("chown");
}

fn run(cg: &TestCgroup, program: &str, args: &[&Path]) {
    let status = cg
        .command(program)
        .args(args)
        .env_clear()
        .stdout(Stdio::null())
        .status()
        .expect("spawn");
    assert!(status.success(), "{program} {args:?}: {status}");
}

fn sh(cg: &TestCgroup, script: &str, args: &[&Path]) {
    let status = cg
        .command("/bin/sh")
        .args(["-c", script, "sh"])
        .args(args)
        .env_clear()
        .stdout(Stdio::null())
        .status()
        .expect("sh");
    assert!(status.success(), "sh -c {script:?} {args:?}: {status}");
}

fn text(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// A human's `~/.aws/credentials` read by an agent by its own path, a relative path, a
/// symlink with an innocent name, a hard link, a bind mount (in a private mount namespace)
/// and `/proc/self/fd/N`: every open is recognised as that one file, and the agent gets one
/// `human-privilege` incident, whichever way it went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_humans_credential_file_by_any_path_is_the_same_human_privilege() {
    let a = TestCgroup::new("files-any");
    let scratch = Scratch::new(&["/home/agentid-files", "/tmp/agentid-files"]);
    let (home, tmp) = (&scratch.0[0], &scratch.0[1]);
    let creds = home.join(".aws/credentials");
    plant(&creds, AWS, HUMAN);
    let (link, hard, mnt) = (
        tmp.join("notes.txt"),
        home.join("notes.txt"),
        tmp.join("mnt"),
    );
    symlink(&creds, &link).expect("symlink");
    std::fs::hard_link(&creds, &hard).expect("hard link");
    std::fs::create_dir(&mnt).expect("mount point");
    let Some(mut rig) = Rig::new("files-any", &reg("alpha", &a, ""), &[&a]) else {
        return;
    };
    run(&a, "/bin/cat", &[&creds]);
    run(&a, "/bin/cat", &[&link]);
    run(&a, "/bin/cat", &[&hard]);
    sh(
        &a,
        "cd \"$1\" && /bin/cat credentials",
        &[&home.join(".aws")],
    );
    // The bind mount exists only in the workload's own mount namespace: the host's mount
    // table is never touched, whatever happens to the test.
    let bound = mnt.join("credentials");
    let status = a
        .command("/usr/bin/unshare")
        .args(["-m", "--propagation", "private", "/bin/sh", "-c"])
        .arg("mount --bind \"$1\" \"$2\" && /bin/cat \"$2/credentials\"")
        .args(["sh", text(&home.join(".aws")), text(&mnt)])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(Stdio::null())
        .status()
        .expect("unshare");
    assert!(
        status.success(),
        "bind mount in a private namespace: {status}"
    );
    sh(&a, "exec 3<\"$1\" && /bin/cat /proc/self/fd/3", &[&link]);
    let (seen, alerts) = rig.run_until_exits(&[a.id], 7).await;

    let real = |via: Option<&Path>| Some((creds.clone(), via.map(Path::to_path_buf)));
    assert_eq!(verdicts(&seen, text(&creds)), [real(None)]);
    // Opened twice through the link: by `cat`, and by the shell for fd 3.
    assert_eq!(verdicts(&seen, text(&link)), vec![real(Some(&link)); 2]);
    assert_eq!(verdicts(&seen, text(&hard)), [real(Some(&hard))]);
    assert_eq!(verdicts(&seen, "credentials"), [real(None)]);
    assert_eq!(verdicts(&seen, text(&bound)), [real(Some(&bound))]);
    let proc_fd = verdicts(&seen, "/proc/self/fd/3");
    assert_eq!(proc_fd.len(), 1, "{proc_fd:?}");
    assert_eq!(
        proc_fd[0].as_ref().map(|v| &v.0),
        Some(&creds),
        "{proc_fd:?}"
    );

    let hp = incidents(&alerts, "human-privilege");
    assert_eq!(hp.len(), 1, "one file, one incident: {hp:#?}");
    assert_eq!(hp[0].severity, Severity::High);
    assert_eq!(hp[0].count, 7, "every open counted: {:#?}", hp[0]);
    let through = alerts
        .iter()
        .filter(|x| x.rule == "human-privilege")
        .any(|x| {
            x.description
                .contains(&format!("through {}", link.display()))
        });
    assert!(through, "the path used is named: {alerts:#?}");
    let shown = serde_json::to_string(&alerts).expect("json");
    assert!(
        !shown.contains("wJalrXUtnFEMI"),
        "canary: the secret never leaves"
    );
    drop(scratch);
}

/// The agent's own declared credential file (owned by someone else, under a home) read
/// through a symlink is its own credential: recognised, not `human-privilege`. The same
/// file through the same link read by an agent that does not declare it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_own_declared_file_through_a_symlink_is_not_human_privilege() {
    let (own, other) = (TestCgroup::new("files-own"), TestCgroup::new("files-other"));
    let scratch = Scratch::new(&["/home/agentid-own", "/tmp/agentid-own"]);
    let token = scratch.0[0].join("bot/token");
    plant(&token, "glpat-Zq8X2mN4vB7cL1kJ9hG3", HUMAN);
    let link = scratch.0[1].join("t");
    symlink(&token, &link).expect("symlink");
    let declared = format!("[agent.credentials]\nfiles = [\"{}\"]", token.display());
    let regs = reg("owner", &own, &declared) + &reg("stranger", &other, "");
    let Some(mut rig) = Rig::new("files-own", &regs, &[&own, &other]) else {
        return;
    };
    run(&own, "/bin/cat", &[&link]);
    run(&other, "/bin/cat", &[&link]);
    let (seen, alerts) = rig.run_until_exits(&[own.id, other.id], 2).await;
    let of = |cg: &TestCgroup| -> Vec<&Seen> {
        seen.iter()
            .filter(|s| s.event.event.cgroup_id == cg.id && s.findings.file.is_some())
            .collect()
    };
    for cg in [&own, &other] {
        let opened = of(cg);
        assert_eq!(opened.len(), 1, "recognised through the link");
        let file = opened[0].findings.file.as_ref().expect("file");
        assert_eq!((&file.path, file.via.as_ref()), (&token, Some(&link)));
        assert!(
            opened[0].findings.observations[0]
                .fingerprint
                .to_string()
                .starts_with("gitlab:")
        );
    }
    let hp = incidents(&alerts, "human-privilege");
    let agents: Vec<&str> = hp
        .iter()
        .flat_map(|a| a.agents.iter().map(|x| x.id.as_str()))
        .collect();
    assert_eq!(agents, ["spiffe://test.example/agent/stranger"], "{hp:#?}");
    drop(scratch);
}

/// Files change under the watch: a credential file created after the daemon started, then
/// replaced by a rename over it (a new inode, as rotation and editors do), is still
/// recognised through names that give nothing away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_and_replaced_credential_files_are_recognised_through_links() {
    let a = TestCgroup::new("files-new");
    let scratch = Scratch::new(&["/home/agentid-new", "/tmp/agentid-new"]);
    let (home, tmp) = (&scratch.0[0], &scratch.0[1]);
    let Some(mut rig) = Rig::new("files-new", &reg("alpha", &a, ""), &[&a]) else {
        return;
    };
    // Created after the start, read through a symlink only.
    let creds = home.join(".kube/config");
    plant(
        &creds,
        "apiVersion: v1\nusers:\n- name: admin\n  user:\n    token: Zq8X2mN4vB7cL1kJ9hG3fD5sA0pO6iU8\n",
        HUMAN,
    );
    let link = tmp.join("cfg");
    symlink(&creds, &link).expect("symlink");
    run(&a, "/bin/cat", &[&link]);
    let (seen, _) = rig.run_until_exits(&[a.id], 1).await;
    assert_eq!(
        verdicts(&seen, text(&link)),
        [Some((creds.clone(), Some(link.clone())))]
    );
    // Replaced by a rename over it: the old inode is gone, the new one is read through a
    // hard link made to it.
    let new = home.join(".kube/.config.new");
    plant(
        &new,
        "apiVersion: v1\nusers:\n- name: admin\n  user:\n    token: Rotated2mN4vB7cL1kJ9hG3fD5sA0pO6\n",
        HUMAN,
    );
    std::fs::rename(&new, &creds).expect("rename over");
    let hard = home.join("innocent");
    std::fs::hard_link(&creds, &hard).expect("hard link");
    run(&a, "/bin/cat", &[&hard]);
    let (seen, alerts) = rig.run_until_exits(&[a.id], 1).await;
    assert_eq!(
        verdicts(&seen, text(&hard)),
        [Some((creds.clone(), Some(hard.clone())))]
    );
    let hp = incidents(&alerts, "human-privilege");
    assert_eq!(hp.len(), 1, "{hp:#?}");
    drop(scratch);
}
