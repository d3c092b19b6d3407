//! Enforcement in the kernel (`enforce = true`), on the real kernel with the real daemon,
//! a real resolver (`dnsmasq` on a loopback address, the agents in mount namespaces whose
//! `/etc/resolv.conf` names it; the host's is never touched) and real clients.
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::Output,
};

use agentid_tests::{
    TestCgroup,
    daemon::{Daemon, registration},
    dns::{ALLOWED, Dnsmasq, OUTSIDE, PYTHON, http_server as server, lo},
};
use serde_json::Value;

/// Connects to `host:port` and prints `ok`, or the errno name of the failure
/// (`EPERM`, or `DNS` when the name did not resolve).
const CONNECT: &str = r"
import errno, socket, sys
try:
    ip = socket.gethostbyname(sys.argv[1])
except OSError as e:
    print('DNS', e); sys.exit(0)
try:
    socket.create_connection((ip, int(sys.argv[2])), 10).close(); print('ok')
except OSError as e:
    print(errno.errorcode.get(e.errno, e))
";

/// [`CONNECT`] to `ip:port` from a process in `cg`: `ok` or the errno's name.
fn connect_from(cg: &TestCgroup, ip: Ipv4Addr, port: u16) -> String {
    let out = cg
        .command(PYTHON)
        .args(["-c", CONNECT, &ip.to_string(), &port.to_string()])
        .output()
        .expect("python");
    said(&out)
}

fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

fn daemon_dir(test: &str, extra: &str) -> PathBuf {
    let dir = Daemon::dir(test);
    let cfg = dir.join("agentid.toml");
    let mut toml = std::fs::read_to_string(&cfg).expect("config");
    toml.push_str(extra);
    std::fs::write(&cfg, toml).expect("config");
    dir
}

fn enforced_cgroups(v: &Value) -> u64 {
    v["enforced"]
        .as_array()
        .map_or(0, |a| a.iter().filter_map(|x| x["cgroups"].as_u64()).sum())
}

fn blocked_alert(v: &Value, rule: &str, what: &str) -> bool {
    v.as_array().is_some_and(|a| {
        a.iter().any(|x| {
            x["rule"] == rule
                && x["action"] == "blocked"
                && x["title"].as_str().is_some_and(|t| t.contains(what))
        })
    })
}

/// Egress by name, in the kernel: the allowed name connects; a name outside is not even
/// resolved (its query is refused); a raw address outside fails with EPERM and raises a
/// `blocked` alert; 10,000 resolve-then-connect cycles on a 1 s TTL with no hold are never
/// early; a forged answer the agent sends itself goes nowhere; moving to the root cgroup
/// does not shed enforcement; an unregistered process and a monitor-mode agent are
/// unaffected.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one daemon, one resolver, every egress case in turn"
)]
fn egress_is_enforced_in_the_kernel_by_name_and_follows_the_process() {
    let cg = TestCgroup::new("enf-egress");
    let mon = TestCgroup::new("enf-monitor");
    let other = TestCgroup::new("enf-unreg");
    let dns = Dnsmasq::start("egress", 1, &[(ALLOWED, lo(1)), (OUTSIDE, lo(2))]);
    let (pa, po) = (server(lo(1)), server(lo(2)));
    let dir = daemon_dir(
        "enf-egress",
        &format!(
            "[dns]\nresolvers = [\"{}\"]\nmin_hold = \"0s\"\ngrace = \"0s\"\n",
            lo(53)
        ),
    );
    let id = "spiffe://test.example/agent/enforced";
    std::fs::write(
        dir.join("agents/a.toml"),
        format!(
            "{}[agent.policy]\nenforce = true\negress = [\"{ALLOWED}:{pa}\"]\n",
            registration("enforced", &cg)
        ),
    )
    .expect("reg");
    std::fs::write(
        dir.join("agents/m.toml"),
        format!(
            "{}[agent.policy]\negress = [\"{ALLOWED}:{pa}\"]\n",
            registration("monitored", &mon)
        ),
    )
    .expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    let st = d.cli_until(&["status"], |v| enforced_cgroups(v) >= 1);
    assert_eq!(st["enforced"][0]["id"], id, "{st:#}");

    let ok = dns.python(&cg, CONNECT, &[ALLOWED, &pa.to_string()]);
    assert_eq!(said(&ok), "ok", "the allowed name must connect");
    let outside = dns.python(&cg, CONNECT, &[OUTSIDE, &po.to_string()]);
    assert!(
        said(&outside).starts_with("DNS"),
        "a query for a name outside the policy must be refused: {}",
        said(&outside)
    );
    let raw = dns.python(&cg, CONNECT, &[&lo(2).to_string(), &po.to_string()]);
    assert_eq!(said(&raw), "EPERM", "a raw address outside the policy");
    let alerts = d.cli_until(&["alerts", "--agent", id], |v| {
        blocked_alert(v, "egress-violation", &lo(2).to_string())
    });
    assert!(blocked_alert(
        &alerts,
        "egress-violation",
        &lo(2).to_string()
    ));

    // The race: resolve then connect at once, 10,000 times, on a 1 s TTL and no hold.
    let race = dns.python(
        &cg,
        r"
import socket, sys
denied = 0
for i in range(10000):
    ip = socket.gethostbyname(sys.argv[1])
    s = socket.socket()
    try:
        s.connect((ip, int(sys.argv[2])))
    except PermissionError:
        denied += 1
    s.close()
print(denied)
",
        &[ALLOWED, &pa.to_string()],
    );
    assert_eq!(said(&race), "0", "spurious denials in 10,000 cycles");

    // Spoofing: a forged answer for the outside name, from a socket of its own on port 53.
    let forged = dns.python(
        &cg,
        r"
import errno, socket, sys
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.bind((sys.argv[1], 53))
cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
cli.bind(('127.0.0.1', 0))
ans = bytes.fromhex('515181800001000100000000') + b'\x07allowed\x07agentid\x04test\x00' \
    + bytes.fromhex('00010001c00c000100010000003c0004') + socket.inet_aton(sys.argv[2])
try:
    srv.sendto(ans, cli.getsockname()); r = 'sent'
except OSError as e:
    r = errno.errorcode.get(e.errno, str(e))
try:
    socket.create_connection((sys.argv[2], int(sys.argv[3])), 5).close(); print(r, 'ok')
except OSError as e:
    print(r, errno.errorcode.get(e.errno, e))
",
        &[&lo(9).to_string(), &lo(2).to_string(), &po.to_string()],
    );
    assert_eq!(
        said(&forged),
        "EPERM EPERM",
        "a self-served answer is dropped and teaches nothing"
    );

    // Escape: into the root cgroup, then connect outside.
    let root = agentid::cgroup::v2_root().expect("cgroup v2");
    let escaped = dns.python(
        &cg,
        r"
import errno, os, socket, sys
open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid()))
try:
    socket.create_connection((sys.argv[2], int(sys.argv[3])), 5).close(); print('ok')
except OSError as e:
    print(errno.errorcode.get(e.errno, e))
",
        &[
            &root.display().to_string(),
            &lo(2).to_string(),
            &po.to_string(),
        ],
    );
    assert_eq!(
        said(&escaped),
        "EPERM",
        "a process that left its cgroup stays enforced"
    );

    // Others are never affected.
    for (who, c) in [
        ("monitor-mode agent", &mon),
        ("unregistered process", &other),
    ] {
        let out = dns.python(c, CONNECT, &[OUTSIDE, &po.to_string()]);
        assert_eq!(said(&out), "ok", "{who}");
    }
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Renames of a new file over an allowed tool, each run at once.
const REPLACEMENTS: usize = 20;

/// Tools: an allowed executable runs, one outside `tools` is killed before it can write a
/// file, an allowed binary replaced by a new file (a new inode) runs at once, every time,
/// and the disallowed binary under another name (renamed, copied, symlinked) is still
/// killed.
#[test]
fn tools_outside_the_policy_are_killed_before_they_run() {
    let cg = TestCgroup::new("enf-tools");
    let dir = daemon_dir("enf-tools", "");
    let tool_dir = dir.join("bin");
    std::fs::create_dir_all(&tool_dir).expect("bin");
    let tool = tool_dir.join("tool");
    std::fs::copy("/usr/bin/true", &tool).expect("copy");
    let kit = dir.join("kit");
    std::fs::create_dir_all(kit.join("sub")).expect("kit");
    std::fs::write(
        dir.join("agents/a.toml"),
        format!(
            "{}[agent.policy]\nenforce = true\ntools = [\"{PYTHON}*\", \"{}\", \"{}/*\"]\n",
            registration("tools", &cg),
            tool.display(),
            kit.display()
        ),
    )
    .expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    d.cli_until(&["status"], |v| enforced_cgroups(v) >= 1);
    let marker = dir.join("written");
    let run = |what: &Path| -> String {
        let out = cg
            .command(PYTHON)
            .args([
                "-c",
                "import subprocess, sys; print(subprocess.run(sys.argv[1:]).returncode)",
            ])
            .arg(what)
            .args(if what == Path::new("/usr/bin/touch") {
                vec![marker.clone()]
            } else {
                vec![]
            })
            .output()
            .expect("python");
        said(&out)
    };
    assert_eq!(run(&tool), "0", "an allowed tool runs");
    assert_eq!(
        run(Path::new("/usr/bin/touch")),
        "-9",
        "a tool outside is killed"
    );
    assert!(!marker.exists(), "the killed tool must not have run");
    let alerts = d.cli_until(
        &["alerts", "--agent", "spiffe://test.example/agent/tools"],
        |v| blocked_alert(v, "tool-violation", "/usr/bin/touch"),
    );
    assert!(blocked_alert(&alerts, "tool-violation", "/usr/bin/touch"));

    // Replaced: a new file renamed over the allowed path runs at once, every time (the
    // kernel allows a literal `tools` path by name; no rescan to wait for).
    for i in 0..REPLACEMENTS {
        let new = tool_dir.join("tool.new");
        std::fs::copy("/usr/bin/true", &new).expect("copy");
        std::fs::rename(&new, &tool).expect("rename");
        assert_eq!(
            run(&tool),
            "0",
            "replacement {i} of the allowed tool was refused"
        );
    }
    // Evasion: the disallowed binary under a name `tools` does not list, by a rename
    // (same inode) and by a fresh copy (a new inode), and through a symlink.
    let other = tool_dir.join("other");
    std::fs::copy("/usr/bin/touch", tool_dir.join("touch.new")).expect("copy");
    std::fs::rename(tool_dir.join("touch.new"), &other).expect("rename");
    let link = tool_dir.join("link");
    std::os::unix::fs::symlink("/usr/bin/touch", &link).expect("symlink");
    for evasive in [&other, &link] {
        let out = cg
            .command(PYTHON)
            .args([
                "-c",
                "import subprocess, sys; print(subprocess.run(sys.argv[1:]).returncode)",
            ])
            .arg(evasive)
            .arg(&marker)
            .output()
            .expect("python");
        assert_eq!(said(&out), "-9", "{} must be killed", evasive.display());
        assert!(!marker.exists(), "{} ran", evasive.display());
    }
    // `DIR/*`: a file put in the directory after the daemon's scan runs at once (the
    // kernel matches the name's directory); a path that only passes through it, or a
    // file in a subdirectory (`*` stays in one component), does not.
    let fresh = kit.join("fresh");
    std::fs::copy("/usr/bin/touch", &fresh).expect("copy");
    std::fs::copy("/usr/bin/touch", kit.join("sub/deeper")).expect("copy");
    let through = PathBuf::from(format!("{}/../bin/other", kit.display()));
    let touch = |what: &Path, file: &Path| -> String {
        let out = cg
            .command(PYTHON)
            .args([
                "-c",
                "import subprocess, sys; print(subprocess.run(sys.argv[1:]).returncode)",
            ])
            .arg(what)
            .arg(file)
            .output()
            .expect("python");
        said(&out)
    };
    let made = dir.join("made");
    assert_eq!(touch(&fresh, &made), "0", "a new file in a DIR/* directory");
    assert!(made.exists(), "the allowed tool ran");
    for evasive in [through, kit.join("sub/deeper")] {
        assert_eq!(touch(&evasive, &marker), "-9", "{}", evasive.display());
        assert!(!marker.exists(), "{} ran", evasive.display());
    }
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// New cgroups: one made inside an enforced agent's cgroup is enforced from its creation,
/// whoever made it, before the daemon's walk has seen it. The agent that makes one and
/// moves into it resolves and connects by the allowed name at once and is refused
/// outside; a fresh process an outsider starts in a new nested one is refused too; and
/// the walk, once it sees them, keeps them enforced.
#[test]
fn cgroups_made_inside_an_enforced_one_are_enforced_at_once() {
    let cg = TestCgroup::new("enf-newcg");
    let dns = Dnsmasq::start("newcg", 1, &[(ALLOWED, lo(21)), (OUTSIDE, lo(22))]);
    let (pa, po) = (server(lo(21)), server(lo(22)));
    let dir = daemon_dir(
        "enf-newcg",
        &format!("[dns]\nresolvers = [\"{}\"]\n", lo(53)),
    );
    std::fs::write(
        dir.join("agents/a.toml"),
        format!(
            "{}[agent.policy]\nenforce = true\negress = [\"{ALLOWED}:{pa}\"]\n",
            registration("newcg", &cg)
        ),
    )
    .expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    d.cli_until(&["status"], |v| enforced_cgroups(v) >= 1);

    // Removed after the processes in them are gone, even if an assertion fails.
    let made = TestCgroup {
        dir: cg.dir.join("made-by-agent"),
        rel: format!("{}/made-by-agent", cg.rel),
        id: 0,
    };
    let moved = dns.python(
        &cg,
        r"
import errno, os, socket, sys
os.mkdir(sys.argv[1])
open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid()))
def connect(host, port):
    try:
        socket.create_connection((host, int(port)), 5).close(); return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
print(connect(sys.argv[2], sys.argv[3]), connect(sys.argv[4], sys.argv[5]))
",
        &[
            &made.dir.display().to_string(),
            ALLOWED,
            &pa.to_string(),
            &lo(22).to_string(),
            &po.to_string(),
        ],
    );
    assert_eq!(
        said(&moved),
        "ok EPERM",
        "the agent in the cgroup it just made: the allowed name, then outside"
    );

    // An outsider makes two levels and starts a fresh process in the deeper one.
    let outer = cg.child("made-outside");
    let inner = outer.child("deeper");
    let fresh = dns.python(&inner, CONNECT, &[OUTSIDE, &po.to_string()]);
    assert!(
        said(&fresh).starts_with("DNS"),
        "a name outside, from a fresh process in a new nested cgroup: {}",
        said(&fresh)
    );
    let raw = dns.python(&inner, CONNECT, &[&lo(22).to_string(), &po.to_string()]);
    assert_eq!(said(&raw), "EPERM", "a raw address outside, from the same");
    let ok = dns.python(&inner, CONNECT, &[ALLOWED, &pa.to_string()]);
    assert_eq!(said(&ok), "ok", "the allowed name, from the same");

    // Once the walk has seen them (the enforced count covers them), still enforced.
    d.cli_until(&["status"], |v| enforced_cgroups(v) >= 4);
    let raw = dns.python(&inner, CONNECT, &[&lo(22).to_string(), &po.to_string()]);
    assert_eq!(said(&raw), "EPERM", "after the walk");
    drop(d);
    drop(inner);
    drop(outer);
    drop(made);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lifecycle: a daemon killed with SIGKILL leaves enforcement in force; a restart resumes the same
/// set (same programs, no duplicates) and enforces the same; a registry reload lifts and
/// restores it; a clean stop removes it.
#[test]
fn enforcement_outlives_a_killed_daemon_and_ends_with_a_clean_stop() {
    let cg = TestCgroup::new("enf-life");
    let (pa, po) = (server(lo(11)), server(lo(12)));
    let dir = daemon_dir("enf-life", "");
    std::fs::write(
        dir.join("agents/a.toml"),
        format!(
            "{}[agent.policy]\nenforce = true\negress = [\"{}:{pa}\"]\n",
            registration("life", &cg),
            lo(11)
        ),
    )
    .expect("reg");
    let connect = |port: u16, ip: Ipv4Addr| connect_from(&cg, ip, port);
    let Some(d) = Daemon::start(&dir) else { return };
    let first = d.cli_until(&["status"], |v| enforced_cgroups(v) >= 1);
    assert_eq!(connect(pa, lo(11)), "ok");
    assert_eq!(connect(po, lo(12)), "EPERM");
    d.kill9();
    assert_eq!(
        connect(po, lo(12)),
        "EPERM",
        "enforcement must hold while no daemon runs"
    );
    assert_eq!(connect(pa, lo(11)), "ok");

    let Some(d) = Daemon::start(&dir) else { return };
    let again = d.cli_until(&["status"], |v| enforced_cgroups(v) >= 1);
    assert_eq!(
        again["probes"], first["probes"],
        "the same programs, no duplicates"
    );
    assert!(d.log_text().contains("Resumed"), "{}", d.log_text());
    assert_eq!(connect(po, lo(12)), "EPERM");

    // A reload that drops `enforce` lifts it; one that brings it back restores it.
    let reg = dir.join("agents/a.toml");
    let text = std::fs::read_to_string(&reg).expect("reg");
    std::fs::write(&reg, text.replace("enforce = true\n", "")).expect("reg");
    d.cli_until(&["status"], |v| {
        v["enforced"].as_array().is_some_and(Vec::is_empty)
    });
    assert_eq!(connect(po, lo(12)), "ok", "monitor mode after the reload");
    std::fs::write(&reg, &text).expect("reg");
    d.cli_until(&["status"], |v| enforced_cgroups(v) >= 1);
    assert_eq!(
        connect(po, lo(12)),
        "EPERM",
        "enforced again after the reload"
    );
    d.stop();
    assert_eq!(
        connect(po, lo(12)),
        "ok",
        "a clean stop removes enforcement"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Address rules as the kernel matches them: a single address and the networks over it
/// each allow their own ports, and one match decides: the address gets the ports of every
/// network that contains it, and its own ports do not leak to the rest of the network.
#[test]
fn address_rules_allow_the_ports_of_every_network_over_them_and_no_more() {
    let cg = TestCgroup::new("enf-nets");
    // Listeners only: the kernel completes a connect to a listening socket's backlog.
    let listen = |ip: Ipv4Addr, port: u16| TcpListener::bind((ip, port)).expect("listener");
    let (host, other, outside) = (lo(32), lo(33), lo(36));
    let la = listen(host, 0);
    let a = la.local_addr().expect("addr").port();
    let lb = listen(host, 0);
    let b = lb.local_addr().expect("addr").port();
    let lc = listen(host, 0);
    let c = lc.local_addr().expect("addr").port();
    let _held = [
        listen(other, a),
        listen(other, b),
        listen(outside, b),
        la,
        lb,
        lc,
    ];
    let dir = daemon_dir("enf-nets", "");
    std::fs::write(
        dir.join("agents/a.toml"),
        format!(
            "{}[agent.policy]\nenforce = true\negress = [\"{host}:{a}\", \"{host}/30:{b}\"]\n",
            registration("nets", &cg),
        ),
    )
    .expect("reg");
    let connect = |ip: Ipv4Addr, port: u16| connect_from(&cg, ip, port);
    let Some(d) = Daemon::start(&dir) else { return };
    d.cli_until(&["status"], |v| enforced_cgroups(v) >= 1);
    let got = vec![
        connect(host, a),
        connect(host, b),
        connect(host, c),
        connect(other, b),
        connect(other, a),
        connect(outside, b),
    ];
    assert_eq!(
        got,
        ["ok", "ok", "EPERM", "ok", "EPERM", "EPERM"],
        "host:a (its rule), host:b (the /30's), host:c, other:b (the /30's), other:a (the host's port only), outside:b"
    );
    d.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
