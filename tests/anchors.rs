//! Audit anchors off the host, against the real daemon: every signed checkpoint goes to the
//! SIEM sinks as it is made, and `agentid audit verify --anchors SINKFILE` catches a log cut
//! back to an earlier run (a rollback `--expect-closed` alone cannot see) and a past record
//! rewritten and re-signed with the key found on the host afterwards (forward security).
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    fmt::Write as _,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use agentid::audit::{self, Checkpoint};
use agentid_tests::{
    TestCgroup, agentid,
    daemon::{Daemon, registration},
    text,
};
use serde_json::{Value, json};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// One daemon run: an exec by the registered agent, seen in the store, then a clean stop
/// (final checkpoint). Returns false when the daemon cannot run here (no BPF, not required).
fn one_run(dir: &Path, cg: &TestCgroup, marker: &str) -> bool {
    let Some(d) = Daemon::start(dir) else {
        return false;
    };
    d.exec_and_stop(cg, marker);
    true
}

/// The anchors the sink has received, once it holds at least `n` (delivery is
/// asynchronous: polled with a deadline).
fn anchors_in(sink: &Path, n: usize) -> Vec<Checkpoint> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = fs::read_to_string(sink)
            .map(|t| audit::Anchors::parse(&t).list)
            .unwrap_or_default();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "the sink {} holds {} anchors, expected {n}",
            sink.display(),
            got.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom"
)]
fn rollback_and_resigning_are_caught_by_the_anchors() {
    let dir = Daemon::dir("anchors");
    let cg = TestCgroup::new("anc-a");
    fs::write(dir.join("agents/a.toml"), registration("alpha", &cg)).expect("reg");
    let sink = dir.join("sink.jsonl");
    let mut config = fs::read_to_string(dir.join("agentid.toml")).expect("config");
    let _ = write!(
        config,
        "[[sinks]]\ntype = \"file\"\npath = \"{}\"\nformat = \"ocsf\"\n",
        sink.display()
    );
    fs::write(dir.join("agentid.toml"), config).expect("config");
    let (audit_dir, key) = (dir.join("state/audit"), dir.join("state/audit.key"));
    let log = audit_dir.join("audit.log");

    // Run 1, then pin the chain's first key as an operator would.
    if !one_run(&dir, &cg, "run-one") {
        return;
    }
    let o = agentid(&["audit", "pubkey", "--key", s(&key)]);
    assert!(o.status.success(), "{}", text(&o));
    let pk = String::from_utf8(o.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let run1 = anchors_in(&sink, 1);
    let run1_lines = fs::read_to_string(&log).expect("log").lines().count();
    // The key on the host has moved on: it is not the key that signed run 1.
    let host_key = audit::load_key(&key).expect("key");
    assert_ne!(
        audit::public_key_base64(&host_key.verifying_key()),
        pk,
        "the key rotated at the checkpoint"
    );
    assert_eq!(
        run1[0].public_key, pk,
        "the first checkpoint is signed by the pinned key"
    );

    // Run 2.
    assert!(
        one_run(&dir, &cg, "run-two"),
        "the daemon ran once, so it runs again"
    );
    let all = anchors_in(&sink, run1.len() + 1);
    let run2: Vec<u64> = all
        .iter()
        .filter(|a| !run1.contains(a))
        .map(|a| a.seq)
        .collect();
    assert!(!run2.is_empty());
    // `pubkey` still prints the pinned first key after rotations.
    let o = agentid(&["audit", "pubkey", "--key", s(&key)]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), pk);

    let verify = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "verify",
            "--dir",
            s(&audit_dir),
            "--pubkey",
            &pk,
            "--expect-closed",
        ];
        args.extend_from_slice(extra);
        agentid(&args)
    };

    // Untouched: passes, every anchor matched.
    let o = verify(&["--anchors", s(&sink)]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let n = all.len();
    assert!(
        out.contains(&format!("anchors: {n} of {n} anchored checkpoints")),
        "{out}"
    );

    // Rolled back to the end of run 1: the log alone still says ok, closed cleanly...
    let original = fs::read_to_string(&log).expect("log");
    let mut cut = original
        .lines()
        .take(run1_lines)
        .collect::<Vec<_>>()
        .join("\n");
    cut.push('\n');
    fs::write(&log, &cut).expect("cut");
    let o = verify(&[]);
    assert!(
        o.status.success(),
        "the rollback is invisible without anchors: {}",
        text(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("closed cleanly"));
    // ...the anchors do not: the run-2 checkpoints are named.
    let o = verify(&["--anchors", s(&sink)]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let seqs = run2
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        err.contains(&format!(
            "lacks {} anchored checkpoint(s) at seq {seqs}",
            run2.len()
        )),
        "{err}"
    );
    assert!(err.contains("rolled back"), "{err}");

    // Forward security: an early record rewritten, the chain re-hashed and every
    // checkpoint re-signed with the key found on the host afterwards.
    fs::write(&log, &original).expect("restore");
    let host_pk = audit::public_key_base64(&host_key.verifying_key());
    let mut recs: Vec<Value> = original
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let victim = recs
        .iter()
        .position(|r| r["type"] == "event")
        .expect("an event");
    recs[victim]["body"]["pid"] = json!(1);
    let mut rewritten = String::new();
    for i in victim..recs.len() {
        if i > 0 {
            recs[i]["prev"] = recs[i - 1]["hash"].clone();
        }
        if recs[i]["type"] == "checkpoint" {
            let head = recs[i - 1]["hash"].as_str().expect("hash").to_owned();
            let seq_to = recs[i - 1]["seq"].as_u64().expect("seq");
            recs[i]["body"]["head"] = json!(head);
            recs[i]["body"]["public_key"] = json!(host_pk);
            recs[i]["body"]["next_public_key"] = json!(host_pk);
            recs[i]["body"]["signature"] = json!(
                audit::sign_checkpoint_with(&host_key, &head, seq_to, Some(&host_pk))
                    .expect("sign")
            );
        }
        recs[i]["hash"] = json!(audit::record_hash_of(&recs[i]).expect("hash"));
    }
    for r in &recs {
        rewritten.push_str(&audit::canonical(r));
        rewritten.push('\n');
    }
    fs::write(&log, &rewritten).expect("rewrite");
    let o = verify(&[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("BadSignature"),
        "{}",
        text(&o)
    );
    let o = verify(&["--anchors", s(&sink)]);
    assert!(!o.status.success(), "{}", text(&o));
    // Without --pubkey the re-signed log is self-consistent; the anchors still refuse it.
    let o = agentid(&[
        "audit",
        "verify",
        "--dir",
        s(&audit_dir),
        "--anchors",
        s(&sink),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("ANCHORS"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}
