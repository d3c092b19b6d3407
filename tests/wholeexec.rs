//! The whole exec, end to end through the real daemon: a key deep in the environment or
//! far down the argument list is scanned like any other, an environment past the capture
//! cap is flagged rather than passed silently, agents that predate the daemon are scanned
//! from `/proc`, and no canary key ever leaves (alerts file, store, API, daemon log).
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use agentid_tests::{
    TestCgroup,
    daemon::{Daemon, registration},
};
use serde_json::Value;

const ALPHA: &str = "spiffe://test.example/agent/alpha";
const BETA: &str = "spiffe://test.example/agent/beta";

/// A per-run canary OpenAI-style key with a tag naming where it was planted.
fn canary(tag: &str) -> String {
    let nonce = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    format!("sk-proj-CANARY{tag}{nonce}Q7x9Lm2Np4Rt6Vw8Yz")
}

/// `filler` bytes of harmless Kubernetes-like service variables. Their names sort before
/// `OPENAI_API_KEY` (`Command` passes the environment sorted by name), so a key planted
/// beside them lies past all of them in the exec's environment area.
fn filler_env(filler: usize) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut used = 0;
    let mut i = 0;
    while used < filler {
        let name = format!("A_SVC_{i:05}_SERVICE_HOST");
        let value = format!("10.96.{}.{}:{:032}", i / 250, i % 250, i);
        used += name.len() + value.len() + 2;
        env.push((name, value));
        i += 1;
    }
    env
}

fn two_agents(test: &str) -> (PathBuf, TestCgroup, TestCgroup) {
    let dir = Daemon::dir(test);
    let (a, b) = (
        TestCgroup::new(&format!("{test}-a")),
        TestCgroup::new(&format!("{test}-b")),
    );
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    std::fs::write(dir.join("agents/b.toml"), registration("beta", &b)).expect("reg");
    (dir, a, b)
}

/// Every file under `dir` (store, alerts file, audit log, spool) but the config.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_none_or(|e| e != "toml") {
                out.push((
                    path.display().to_string(),
                    std::fs::read(&path).unwrap_or_default(),
                ));
            }
        }
    }
    out
}

fn assert_never_leaked(haystack: &[(String, Vec<u8>)], secrets: &[&String]) {
    assert!(
        haystack.iter().any(|(n, _)| n.ends_with("agentid.db")),
        "the store was searched"
    );
    assert!(
        haystack.iter().any(|(n, _)| n.ends_with("alerts.jsonl")),
        "the alerts file was searched"
    );
    for secret in secrets {
        for (name, bytes) in haystack {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "a canary key leaked into {name}");
        }
    }
}

fn exec_events(d: &Daemon, agent: &str) -> Vec<Value> {
    d.cli(&["events", "--agent", agent, "--kind", "exec"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Two agents share a key placed after 24 KiB and after 200 KiB of environment: exactly
/// one `credential-reuse` alert names both. A key as the 40th argument (past the exec
/// record's first KiB) is fingerprinted and redacted. An environment past the cap flags
/// the exec. None of the keys appears in any output.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom"
)]
fn keys_deep_in_the_exec_are_caught_and_never_leave() {
    let (dir, a, b) = two_agents("whole");
    let Some(d) = Daemon::start(&dir) else { return };

    let shared = canary("env");
    // A GitHub token's body is at least 36 characters.
    let arg_key = format!(
        "ghp_CANARYarg{:08x}aB3dE5gH7jK9mN1pQ3sTuV",
        std::process::id()
    );
    let beyond = canary("beyond");
    for (cg, filler) in [(&a, 24 * 1024), (&b, 200 * 1024)] {
        let st = cg
            .command("/bin/true")
            .env_clear()
            .envs(filler_env(filler))
            .env("OPENAI_API_KEY", &shared)
            .arg(format!("deep-{filler}"))
            .status()
            .expect("spawn");
        assert!(st.success());
    }
    // The key as the 40th argument, after ~1.5 KiB of arguments.
    let mut args: Vec<String> = (1..40)
        .map(|i| format!("--option-{i:02}={i:030}"))
        .collect();
    args.push(format!("--token={arg_key}"));
    let st = a
        .command("/bin/true")
        .env_clear()
        .args(&args)
        .status()
        .expect("spawn");
    assert!(st.success());
    // An environment past the 256 KiB cap, a key beyond it.
    let big = "v".repeat(100_000);
    let st = b
        .command("/bin/true")
        .env_clear()
        .env("BIG_A", &big)
        .env("BIG_B", &big)
        .env("BIG_C", &big)
        .env("OPENAI_API_KEY", &beyond)
        .arg("over-the-cap")
        .status()
        .expect("spawn");
    assert!(st.success());

    // One alert, naming both agents.
    let alerts = d.cli_until(&["alerts", "--rule", "credential-reuse"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    let creds = d.cli_until(&["credentials"], |v| {
        v.to_string().contains("github:") && v.to_string().contains("openai:")
    });
    // Both agents' execs in the store, the arguments redacted.
    let alpha = {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let ev = exec_events(&d, ALPHA);
            if ev
                .iter()
                .any(|e| e["argv"].as_array().is_some_and(|a| a.len() == 41))
                && ev.iter().any(|e| e["argv"][1] == "deep-24576")
            {
                break ev;
            }
            assert!(
                Instant::now() < deadline,
                "alpha's execs never stored: {ev:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let beta = {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let ev = exec_events(&d, BETA);
            if ev.iter().any(|e| e["argv"][1] == "over-the-cap")
                && ev.iter().any(|e| e["argv"][1] == "deep-204800")
            {
                break ev;
            }
            assert!(
                Instant::now() < deadline,
                "beta's execs never stored: {ev:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The alert is not raised twice (give a late duplicate the chance to show).
    std::thread::sleep(Duration::from_secs(1));
    let alerts_again = d.cli(&["alerts", "--rule", "credential-reuse"]);
    let list = alerts_again.as_array().expect("alerts");
    assert_eq!(
        list.len(),
        1,
        "exactly one credential-reuse alert: {alerts_again:#}"
    );
    let mut named: Vec<&str> = list[0]["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    named.sort_unstable();
    assert_eq!(named, [ALPHA, BETA]);
    assert!(
        list[0]["evidence"]["credential"]["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("openai:")),
        "{list:#?}"
    );

    // The 40th argument: fingerprinted, redacted in the stored event.
    assert!(
        creds
            .as_array()
            .expect("credentials")
            .iter()
            .any(|c| c.to_string().contains("github:")),
        "{creds:#}"
    );
    let forty = alpha
        .iter()
        .find(|e| e["argv"].as_array().is_some_and(|a| a.len() == 41))
        .expect("the 41-argument exec");
    let fortieth = forty["argv"][40].as_str().expect("argv[40]");
    assert!(fortieth.contains("[REDACTED"), "argv[40] is {fortieth}");
    assert_eq!(forty["argv"][39], format!("--option-39={:030}", 39));
    assert!(forty.get("scan_incomplete").is_none(), "{forty}");

    // Deep environments: captured whole, not flagged.
    let deep = beta
        .iter()
        .find(|e| e["argv"][1] == "deep-204800")
        .expect("deep exec");
    assert!(deep.get("scan_incomplete").is_none(), "{deep}");
    // Past the cap: flagged on the event.
    let over = beta
        .iter()
        .find(|e| e["argv"][1] == "over-the-cap")
        .expect("over-the-cap exec");
    assert_eq!(
        over["scan_incomplete"],
        serde_json::json!(["env-beyond-cap"]),
        "{over}"
    );
    // ...and never a silent flag: `credential-scan-incomplete` names the process.
    let incomplete = d.cli_until(&["alerts", "--rule", "credential-scan-incomplete"], |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["evidence"]["processes"][0]["pid"] == over["pid"])
        })
    });
    let alert = incomplete
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|x| x["evidence"]["processes"][0]["pid"] == over["pid"])
        })
        .expect("the alert")
        .clone();
    assert_eq!(alert["severity"], "medium");
    assert!(
        alert["description"]
            .as_str()
            .is_some_and(|t| t.contains("env-beyond-cap")),
        "{alert}"
    );

    let mut outputs = vec![
        alerts.to_string(),
        alerts_again.to_string(),
        creds.to_string(),
        Value::from(alpha).to_string(),
        Value::from(beta).to_string(),
    ];
    for args in [&["events"][..], &["ps"], &["status"], &["alerts"]] {
        outputs.push(d.cli(args).to_string());
    }
    let log = d.log.clone();
    assert!(d.stop().success());
    let mut haystack: Vec<(String, Vec<u8>)> = outputs
        .into_iter()
        .enumerate()
        .map(|(i, o)| (format!("api#{i}"), o.into_bytes()))
        .collect();
    haystack.push((
        "daemon log".into(),
        log.lock().expect("log").clone().into_bytes(),
    ));
    haystack.extend(files_under(&dir));
    assert_never_leaked(&haystack, &[&shared, &arg_key, &beyond]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills a long-running child on drop, also when an assertion fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two agents already running when the daemon starts (a first install, or a daemon
/// restart) with the same key deep in their environments: scanned from `/proc` at
/// start-up, one `credential-reuse` alert naming both, the key nowhere in the output.
#[test]
fn agents_running_before_the_daemon_are_scanned_from_proc() {
    let (dir, a, b) = two_agents("seeded");
    let key = canary("seeded");
    let mut running = Vec::new();
    for cg in [&a, &b] {
        let child = cg
            .command("/bin/sleep")
            .arg("120")
            .env_clear()
            .envs(filler_env(24 * 1024))
            .env("OPENAI_API_KEY", &key)
            .spawn()
            .expect("spawn sleep");
        running.push(Running(child));
    }
    // Both are in their cgroups before the daemon looks (the spawn moved them there in
    // the child before exec, so this holds once spawn returned).
    let Some(d) = Daemon::start(&dir) else { return };
    let alerts = d.cli_until(&["alerts", "--rule", "credential-reuse"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    let list = alerts.as_array().expect("alerts");
    assert_eq!(list.len(), 1, "{alerts:#}");
    let mut named: Vec<&str> = list[0]["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    named.sort_unstable();
    assert_eq!(named, [ALPHA, BETA]);
    let outputs = [
        alerts.to_string(),
        d.cli(&["credentials"]).to_string(),
        d.cli(&["ps"]).to_string(),
    ];
    drop(running);
    let log = d.log.clone();
    assert!(d.stop().success());
    let mut haystack: Vec<(String, Vec<u8>)> = outputs
        .into_iter()
        .enumerate()
        .map(|(i, o)| (format!("api#{i}"), o.into_bytes()))
        .collect();
    haystack.push((
        "daemon log".into(),
        log.lock().expect("log").clone().into_bytes(),
    ));
    haystack.extend(files_under(&dir));
    assert_never_leaked(&haystack, &[&key]);
    let _ = std::fs::remove_dir_all(&dir);
}
