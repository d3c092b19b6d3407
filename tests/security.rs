//! Security properties of the real daemon: the API group, private state files, symlinks a
//! workload controls, secrets in arguments, and the systemd sandbox's restrictions
//! (emulated, on the host kernel: the real unit under a real systemd is `systemd.rs`, run
//! in the systemd guest of `cargo xtask test`).
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    fmt::Write as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agentid_tests::{
    TestCgroup, agentid_bin,
    daemon::{Daemon, has_exec_of, registration},
};
use serde_json::Value;

const ALPHA: &str = "spiffe://test.example/agent/alpha";

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().expect(cmd);
    assert!(st.success(), "{cmd} {args:?}: {st}");
}

fn id_of(flag: &str, name: &str) -> u32 {
    let out = Command::new("id").args([flag, name]).output().expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("numeric id")
}

/// Test users and a group, removed on drop.
struct Accounts {
    group: String,
    users: Vec<String>,
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for u in &self.users {
            let _ = Command::new("userdel").arg(u).status();
        }
        let _ = Command::new("groupdel").arg(&self.group).status();
    }
}

/// `socket_group` names a real group: its member can query the API, a non-member (and
/// nobody) cannot.
#[test]
fn the_api_group_admits_members_only() {
    // Per-run names: tests of other branches may run on this host at the same time.
    let tag = std::process::id() % 100_000;
    let accounts = Accounts {
        group: format!("agentid-test{tag}"),
        users: vec![format!("agidm{tag}"), format!("agidn{tag}")],
    };
    run("groupadd", &[&accounts.group]);
    run(
        "useradd",
        &[
            "-M",
            "-N",
            "-s",
            "/usr/sbin/nologin",
            "-G",
            &accounts.group,
            &accounts.users[0],
        ],
    );
    run(
        "useradd",
        &["-M", "-N", "-s", "/usr/sbin/nologin", &accounts.users[1]],
    );

    let dir = Daemon::dir("group");
    let mut config = std::fs::read_to_string(dir.join("agentid.toml")).expect("config");
    let _ = writeln!(config, "socket_group = \"{}\"", accounts.group);
    std::fs::write(dir.join("agentid.toml"), config).expect("config");
    // The users must reach the socket (and the binary): the test dir is theirs to traverse.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let Some(d) = Daemon::start(&dir) else { return };
    let sock = dir.join("agentid.sock");
    let meta = std::fs::metadata(&sock).expect("socket");
    assert_eq!(meta.mode() & 0o777, 0o660);
    let gid = Command::new("getent")
        .args(["group", &accounts.group])
        .output()
        .expect("getent");
    let gid: u32 = String::from_utf8_lossy(&gid.stdout)
        .split(':')
        .nth(2)
        .and_then(|g| g.parse().ok())
        .expect("gid");
    assert_eq!(meta.gid(), gid, "the socket belongs to the API group");

    let as_user = |user: &str| {
        Command::new("setpriv")
            .args(["--reuid", user, "--regid"])
            .arg(id_of("-g", user).to_string())
            .arg("--init-groups")
            .arg(agentid_bin())
            .arg("--socket")
            .arg(&sock)
            .args(["--json", "status"])
            .output()
            .expect("setpriv")
    };
    let member = as_user(&accounts.users[0]);
    assert!(
        member.status.success(),
        "a group member is refused: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    let v: Value = serde_json::from_slice(&member.stdout).expect("status JSON");
    assert_eq!(v["pid"], d.child.id());

    let outsider = as_user(&accounts.users[1]);
    assert_eq!(outsider.status.code(), Some(1));
    let err = String::from_utf8_lossy(&outsider.stderr);
    assert!(err.contains("permission denied"), "{err}");
    assert!(outsider.stdout.is_empty());
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file the daemon creates under its state dir is 0600 and every directory 0700,
/// whatever the umask it was started with: store (and journal), keys, audit log, a
/// sink's spool, revocations.
#[test]
fn state_files_are_private() {
    let dir = Daemon::dir("modes");
    let (a, b) = (TestCgroup::new("md-a"), TestCgroup::new("md-b"));
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    std::fs::write(dir.join("agents/b.toml"), registration("beta", &b)).expect("reg");
    let mut config = std::fs::read_to_string(dir.join("agentid.toml")).expect("config");
    // A syslog sink on a closed loopback port: everything stays in its spool.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let _ = write!(
        config,
        "[[sinks]]\nname = \"siem\"\ntype = \"syslog\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nformat = \"cef\"\n"
    );
    std::fs::write(dir.join("agentid.toml"), config).expect("config");
    // A careless umask, as an init script might leave it.
    // SAFETY: umask only swaps this process's mask; the daemon child inherits it.
    let old = unsafe { libc::umask(0o000) };
    let started = Daemon::start(&dir);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let Some(d) = started else { return };
    let secret = format!("sk-proj-MODES{}q7x9Lm2Np4Rt6Vw8Yz0aB", std::process::id());
    for cg in [&a, &b] {
        assert!(
            cg.command("/bin/true")
                .env_clear()
                .env("OPENAI_API_KEY", &secret)
                .status()
                .expect("spawn")
                .success()
        );
    }
    let alerts = d.cli_until(&["alerts", "--rule", "credential-reuse"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    let fp = alerts[0]["evidence"]["credential"]["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    d.cli(&["credentials", "revoke", &fp]);
    let state = dir.join("state");
    // The spool has the alert once the sink tried.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state.join("revoked").exists() || !state.join("spool").exists() {
        assert!(Instant::now() < deadline, "no spool or revoked file");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.stop().success());

    let mut seen = Vec::new();
    let mut stack = vec![state.clone()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).expect("read dir").flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            let mode = meta.mode() & 0o777;
            let name = path
                .strip_prefix(&state)
                .expect("under state")
                .display()
                .to_string();
            if meta.is_dir() {
                assert_eq!(mode, 0o700, "{name} is a {mode:o} directory");
                stack.push(path);
            } else {
                assert!(meta.is_file(), "{name}: not a regular file");
                assert_eq!(mode & 0o077, 0, "{name} is {mode:o}");
            }
            seen.push(name);
        }
    }
    for expected in [
        "agentid.db",
        "audit.key",
        "fingerprint.key",
        "revoked",
        "audit/audit.log",
        "spool",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "{expected} not checked; saw {seen:?}"
        );
    }
    assert_eq!(
        std::fs::metadata(&state).expect("state").mode() & 0o777,
        0o700
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read")))
}

/// A workload execs through a symlink it controls, then points the symlink elsewhere:
/// the daemon identifies the image by `/proc/PID/exe` (the inode the kernel runs), never
/// by resolving the workload's path again. And a `.env` symlinked to a root-only file
/// leaks nothing from it.
#[test]
fn workload_symlinks_are_not_followed() {
    let dir = Daemon::dir("symlink");
    let cg = TestCgroup::new("sym");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("work");
    // The agent is "whoever runs this exact image": a copy of sleep.
    let image = work.join("agent-tool");
    std::fs::copy("/bin/sleep", &image).expect("copy");
    // Trailing bytes make the image (and its hash) this test's own; ELF ignores them.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&image)
        .expect("open");
    std::io::Write::write_all(
        &mut f,
        format!("agentid-test-{}", std::process::id()).as_bytes(),
    )
    .expect("append");
    drop(f);
    let other = work.join("other");
    std::fs::copy("/bin/true", &other).expect("copy");
    std::fs::write(
        dir.join("agents/a.toml"),
        format!(
            "[[agent]]\nid = \"{ALPHA}\"\nname = \"alpha\"\n[[agent.selectors]]\nexe_sha256 = \"{}\"\n",
            sha256_hex(&image)
        ),
    )
    .expect("reg");
    // A root-only "secret" the workload points its .env at.
    let secret_file = dir.join("root-only-secret");
    let canary = format!("sk-proj-SYMLINK{}q7x9Lm2Np4Rt6Vw8Yz0aB", std::process::id());
    std::fs::write(&secret_file, format!("OPENAI_API_KEY={canary}\n")).expect("secret");
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::symlink(&secret_file, work.join(".env")).expect("symlink");

    let Some(d) = Daemon::start(&dir) else { return };
    let link = work.join("tool-link");
    std::os::unix::fs::symlink(&image, &link).expect("symlink");
    let mut child = cg
        .command(&link)
        .arg("30")
        .current_dir(&work)
        .spawn()
        .expect("spawn via symlink");
    // Retarget the link as soon as the process runs.
    std::thread::sleep(Duration::from_millis(50));
    std::fs::remove_file(&link).expect("rm link");
    std::os::unix::fs::symlink(&other, &link).expect("retarget");
    // Its fork shows first; wait for its exec (through the link) to be applied.
    d.cli_until(&["ps", "--agent", ALPHA], |v| {
        v.as_array().is_some_and(|p| {
            p.iter().any(|p| {
                p["pid"] == child.id() && p["argv"][1] == "30" && p["agent"]["id"] == ALPHA
            })
        })
    });
    // The retargeted link run again is not the agent's image.
    assert!(
        cg.command(&link)
            .current_dir(&work)
            .status()
            .expect("spawn")
            .success()
    );
    let unreg = d.cli_until(&["events", "--kind", "exec"], |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["filename"] == link.display().to_string() && e["pid"] != child.id())
        })
    });
    for e in unreg.as_array().expect("events") {
        if e["filename"] == link.display().to_string() && e["pid"] != child.id() {
            assert_eq!(
                e["agent"], "unregistered",
                "the retargeted link was attributed: {e}"
            );
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let creds = d.cli(&["credentials"]);
    assert!(!creds.to_string().contains(&canary));
    assert!(d.stop().success());
    let db = std::fs::read(dir.join("state/agentid.db")).expect("db");
    assert!(!db.windows(canary.len()).any(|w| w == canary.as_bytes()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bearer tokens and JWTs in arguments reach no store, log, sink or API output.
#[test]
fn bearer_tokens_and_jwts_in_arguments_never_leave() {
    let dir = Daemon::dir("bearer");
    let a = TestCgroup::new("br-a");
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    let mut config = std::fs::read_to_string(dir.join("agentid.toml")).expect("config");
    let _ = write!(
        config,
        "[[sinks]]\ntype = \"file\"\npath = \"{}/sink.jsonl\"\nformat = \"ocsf\"\ninclude_activity = true\n",
        dir.display()
    );
    std::fs::write(dir.join("agentid.toml"), config).expect("config");
    let Some(d) = Daemon::start(&dir) else { return };
    let nonce = format!("{:x}", std::process::id());
    let bearer = format!("CANARYbearer{nonce}Zq8Xw2Lp5Rt7Vn9Mb3Kd");
    // header.payload.signature, base64url, as every JWT.
    let jwt = format!(
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJDQU5BUlkke25vbmNlfSJ9.CANARYjwt{nonce}sig_Q9x-Lm2Np4Rt"
    );
    assert!(
        a.command("/bin/echo")
            .arg("-H")
            .arg(format!("Authorization: Bearer {bearer}"))
            .arg("--id-token")
            .arg(&jwt)
            .arg(format!("https://user:{bearer}@example.invalid/"))
            .stdout(Stdio::null())
            .status()
            .expect("spawn")
            .success()
    );
    let ev = d.cli_until(&["events", "--agent", ALPHA], |v| {
        has_exec_of(v, "/bin/echo")
    });
    let mut outputs = vec![ev.to_string()];
    for args in [&["ps"][..], &["credentials"], &["alerts"]] {
        outputs.push(d.cli(args).to_string());
    }
    std::thread::sleep(Duration::from_secs(2));
    let log = d.log_text();
    assert!(d.stop().success());
    let mut haystack: Vec<(String, Vec<u8>)> = outputs
        .into_iter()
        .map(|o| ("api".to_owned(), o.into_bytes()))
        .collect();
    haystack.push(("daemon log".into(), log.into_bytes()));
    let mut stack: Vec<PathBuf> = vec![dir.clone()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_none_or(|e| e != "toml") {
                haystack.push((
                    path.display().to_string(),
                    std::fs::read(&path).expect("read"),
                ));
            }
        }
    }
    for secret in [&bearer, &jwt] {
        for (name, bytes) in &haystack {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} leaked into {name}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The daemon under the restrictions of `scripts/agentid.service` that can be applied
/// without systemd: the capability bounding set, `no_new_privs`, and a read-only root with
/// only the state, runtime and log dirs writable (`ProtectSystem=strict` +
/// `ReadWritePaths`). Probes attach and an exec is attributed.
#[test]
fn the_sandboxed_daemon_still_traces() {
    let dir = Daemon::dir("sandbox");
    let a = TestCgroup::new("sb-a");
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    let config = dir.join("agentid.toml");
    // `unshare -m` gives a private mount namespace; inside it everything is remounted
    // read-only except the daemon's dir (state, socket, alerts), then capabilities
    // outside the unit's bounding set are dropped for good.
    let caps = "-all,+bpf,+perfmon,+net_admin,+sys_resource,+sys_admin,+sys_ptrace,+dac_read_search,+chown,+fowner";
    let script = format!(
        "set -e\n\
         mount --make-rprivate /\n\
         for m in / /usr /etc /home /root; do mountpoint -q $m && mount -o remount,bind,ro $m; done\n\
         mount --bind {dir} {dir}\n\
         mount -o remount,bind,rw {dir}\n\
         exec setpriv --no-new-privs --bounding-set {caps} --inh-caps -all {bin} daemon --config {config}\n",
        dir = dir.display(),
        bin = agentid_bin().display(),
        config = config.display()
    );
    std::fs::write(dir.join("sandbox.sh"), &script).expect("script");
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh"])
        .arg(dir.join("sandbox.sh"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    let Some(d) = Daemon::adopt(child, &dir) else {
        return;
    };
    // bpffs stays writable under the unit's restrictions: the probes are pinned.
    assert!(d.pin_dir().is_some(), "not pinned: {}", d.log_text());
    // The daemon really runs restricted.
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).expect("status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .expect("field")
            .to_owned()
    };
    assert_eq!(field("NoNewPrivs:"), "1");
    let bnd = u64::from_str_radix(&field("CapBnd:"), 16).expect("hex");
    // CAP_SYS_MODULE (16) and CAP_SETUID (7) gone; CAP_BPF (39) kept.
    assert_eq!(bnd & (1 << 16 | 1 << 7), 0, "CapBnd {bnd:x}");
    assert_ne!(bnd & (1 << 39), 0, "CapBnd {bnd:x}");
    assert!(a.command("/bin/true").status().expect("true").success());
    d.cli_until(&["events", "--agent", ALPHA], |v| {
        has_exec_of(v, "/bin/true")
    });
    // Writes outside the allowed dirs fail inside its namespace.
    let ro = Command::new("nsenter")
        .args([
            "-t",
            &d.child.id().to_string(),
            "-m",
            "touch",
            "/etc/agentid-sandbox-probe",
        ])
        .output()
        .expect("nsenter");
    assert!(!ro.status.success(), "/etc is writable in the sandbox");
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Removes a test's directory on drop, also when an assertion fails.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the daemon on `dir`'s config and returns its exit status and log, failing the test
/// if it is still running after 30 s (a key path it blocks on, or a key it accepted).
fn daemon_exit(dir: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(agentid_bin())
        .args(["daemon", "--config"])
        .arg(dir.join("agentid.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn daemon");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut log);
        log
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "daemon still running after 30 s: {}",
                reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().expect("log reader"))
}

/// Someone with write access to the state directory plants the daemon's secret keys before
/// its first start: a symlink to a file they can read, a key file they can read, a FIFO the
/// daemon would block on, a key they own. The daemon must refuse each one and stop (naming
/// the file and why), never use the planted key, never write through the link, never hang.
#[test]
fn planted_key_files_stop_the_daemon() {
    let fingerprint_key = vec![7u8; 32];
    let audit_key = b"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n".to_vec();
    for (key, content) in [
        ("fingerprint.key", &fingerprint_key),
        ("audit.key", &audit_key),
    ] {
        for plant in ["symlink", "readable", "fifo", "foreign"] {
            if plant == "foreign" && std::fs::metadata("/proc/self").expect("self").uid() != 0 {
                continue; // only root can hand a file to another user
            }
            let dir = Daemon::dir(&format!("plant-{plant}-{}", &key[..2]));
            let _cleanup = RemoveDir(dir.clone());
            let state = dir.join("state");
            std::fs::create_dir(&state).expect("state dir");
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
                .expect("chmod");
            let path = state.join(key);
            // The planter's own copy, readable by everyone.
            let theirs = dir.join("theirs.key");
            std::fs::write(&theirs, content).expect("write");
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
            let reason = match plant {
                "symlink" => {
                    std::os::unix::fs::symlink(&theirs, &path).expect("symlink");
                    // Each key keeps its own wording.
                    if key == "audit.key" {
                        "is a symlink"
                    } else {
                        "is a symbolic link"
                    }
                }
                "readable" => {
                    std::fs::copy(&theirs, &path).expect("copy");
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                        .expect("chmod");
                    "mode 0644"
                }
                "fifo" => {
                    run("mkfifo", &["-m", "600", &path.display().to_string()]);
                    "not a regular file"
                }
                _ => {
                    std::fs::copy(&theirs, &path).expect("copy");
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .expect("chmod");
                    std::os::unix::fs::chown(&path, Some(65534), None).expect("chown");
                    "owned by uid 65534"
                }
            };
            let (status, log) = daemon_exit(&dir);
            let case = format!("{key} {plant}");
            assert!(!status.success(), "{case}: daemon exited {status}:\n{log}");
            assert!(
                !log.contains("API listening"),
                "{case}: daemon served:\n{log}"
            );
            // The error names the file and what is wrong with it.
            assert!(
                log.contains(&path.display().to_string()) && log.contains(reason),
                "{case}: log does not say {reason:?}:\n{log}"
            );
            // Nothing was written through the link or over the planted file.
            assert_eq!(&std::fs::read(&theirs).expect("theirs"), content, "{case}");
            assert!(
                std::fs::symlink_metadata(&path).is_ok(),
                "{case}: planted file replaced or removed"
            );
        }
    }
}
