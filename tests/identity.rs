//! Identity on the real kernel: registrations by cgroup, attribution of real processes,
//! cgroup moves, hand-offs between agents (`acting_for`), `/proc` seeding, unregistered.
#![expect(
    clippy::expect_used,
    clippy::many_single_char_names,
    reason = "a failed step is a failed test; one-letter names for the agents' cgroups"
)]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    fmt::Write as _, io::Write, net::TcpListener, process::Stdio, sync::Arc, time::Duration,
};

use agentid::{
    attribution::AttributedEvent,
    cgroup,
    credentials::FingerprintKey,
    event::{Detail, EventKind},
    identity::Registry,
    pipeline::Pipeline,
};
use agentid_tests::{TestCgroup, attributed_until, sensor_or_skip};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");
const TIMEOUT: Duration = Duration::from_secs(30);

fn registry(agents: &[(&str, &TestCgroup)]) -> Arc<Registry> {
    let mut text = String::new();
    for (name, cg) in agents {
        let _ = write!(
            text,
            "[[agent]]\nid = \"spiffe://test.example/agent/{name}\"\nname = \"{name}\"\n\
             owner = \"team-{name}@example.org\"\nenvironment = \"test\"\n\
             [[agent.selectors]]\ncgroup = \"{}/**\"\n[[agent.selectors]]\ncgroup = \"{}\"\n\n",
            cg.rel, cg.rel
        );
    }
    let r = Registry::parse_str(&text, "test.toml");
    assert!(r.errors().is_empty(), "{:?}", r.errors());
    Arc::new(r)
}

fn pipeline(reg: Arc<Registry>) -> Pipeline {
    Pipeline::new(
        reg,
        cgroup::v2_root().expect("cgroup v2"),
        FingerprintKey::ephemeral().expect("key"),
    )
}

fn agent_name(e: &AttributedEvent) -> Option<&str> {
    e.agent.as_ref().and_then(|a| a.name.as_deref())
}

fn kinds(events: &[AttributedEvent], kind: EventKind) -> Vec<&AttributedEvent> {
    events.iter().filter(|e| e.event.kind == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_by_cgroup_and_an_unregistered_one() {
    let Some(mut sensor) = sensor_or_skip("id-two") else {
        return;
    };
    let (a, b, u) = (
        TestCgroup::new("id-a"),
        TestCgroup::new("id-b"),
        TestCgroup::new("id-u"),
    );
    let mut p = pipeline(registry(&[("alpha", &a), ("beta", &b)]));
    p.seed();
    for cg in [&a, &b, &u] {
        assert!(cg.command("/bin/true").status().expect("spawn").success());
    }
    let ids = [a.id, b.id, u.id];
    let events = attributed_until(&mut sensor, &mut p, &ids, TIMEOUT, |ev| {
        kinds(ev, EventKind::Exit).len() >= 3
    })
    .await;
    for (cg, want) in [(&a, Some("alpha")), (&b, Some("beta")), (&u, None)] {
        let exec = events
            .iter()
            .find(|e| e.event.cgroup_id == cg.id && e.event.kind == EventKind::Exec)
            .expect("exec");
        assert_eq!(agent_name(exec), want, "{exec:#?}");
        if let Some(name) = want {
            let agent = exec.agent.as_ref().expect("agent");
            assert_eq!(agent.id, format!("spiffe://test.example/agent/{name}"));
            assert_eq!(
                agent.owner.as_deref(),
                Some(format!("team-{name}@example.org").as_str())
            );
            let session = exec.session.as_deref().expect("session");
            assert_eq!(
                session,
                format!(
                    "{name}/{}-{}",
                    exec.event.pid,
                    exec.exec_id
                        .as_ref()
                        .expect("exec id")
                        .as_str()
                        .split(':')
                        .nth(2)
                        .expect("start")
                )
            );
            assert!(exec.acting_for.is_empty());
        } else {
            assert!(exec.session.is_none());
            let v = serde_json::to_value(exec).expect("json");
            assert_eq!(v["agent"], "unregistered");
        }
        assert_eq!(
            exec.parent_exec_id
                .as_ref()
                .map(|id| id.as_str().ends_with(&format!(":{}", std::process::id()))),
            Some(true)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_process_changes_identity_from_then_on() {
    let Some(mut sensor) = sensor_or_skip("id-move") else {
        return;
    };
    let (a, b) = (TestCgroup::new("mv-a"), TestCgroup::new("mv-b"));
    let mut p = pipeline(registry(&[("alpha", &a), ("beta", &b)]));
    p.seed();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr").to_string();
    let procs = b.dir.join("cgroup.procs");
    let st = a
        .command(WORKLOAD)
        .args(["move-connect", procs.to_str().expect("path"), &addr])
        .status()
        .expect("spawn");
    assert!(st.success());
    let events = attributed_until(&mut sensor, &mut p, &[a.id, b.id], TIMEOUT, |ev| {
        kinds(ev, EventKind::Connect).len() >= 2
    })
    .await;
    let connects = kinds(&events, EventKind::Connect);
    assert_eq!(connects[0].event.cgroup_id, a.id);
    assert_eq!(agent_name(connects[0]), Some("alpha"));
    assert_eq!(connects[1].event.cgroup_id, b.id);
    assert_eq!(
        agent_name(connects[1]),
        Some("beta"),
        "identity follows the cgroup move"
    );
    assert_eq!(
        connects[1].acting_for,
        vec!["spiffe://test.example/agent/alpha".to_owned()]
    );
    assert_eq!(
        connects[0].exec_id, connects[1].exec_id,
        "same process throughout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_keeps_the_original_actor() {
    let Some(mut sensor) = sensor_or_skip("id-handoff") else {
        return;
    };
    let (sup, work, third) = (
        TestCgroup::new("ho-sup"),
        TestCgroup::new("ho-work"),
        TestCgroup::new("ho-third"),
    );
    let mut p = pipeline(registry(&[
        ("supervisor", &sup),
        ("worker", &work),
        ("third", &third),
    ]));
    p.seed();
    let work_procs = work.dir.join("cgroup.procs");
    let third_procs = third.dir.join("cgroup.procs");
    // supervisor → (spawn into worker) workload → (spawn into third) /bin/true
    let st = sup
        .command(WORKLOAD)
        .args([
            "spawn-into",
            work_procs.to_str().expect("path"),
            WORKLOAD,
            "spawn-into",
            third_procs.to_str().expect("path"),
            "/bin/true",
        ])
        .status()
        .expect("spawn");
    assert!(st.success());
    let ids = [sup.id, work.id, third.id];
    let events = attributed_until(&mut sensor, &mut p, &ids, TIMEOUT, |ev| {
        ev.iter()
            .any(|e| e.event.kind == EventKind::Exit && e.event.cgroup_id == sup.id)
    })
    .await;
    let exec_in = |cg: &TestCgroup| {
        events
            .iter()
            .find(|e| e.event.cgroup_id == cg.id && e.event.kind == EventKind::Exec)
            .expect("exec")
            .clone()
    };
    let s = exec_in(&sup);
    let w = exec_in(&work);
    let t = exec_in(&third);
    assert_eq!(agent_name(&s), Some("supervisor"));
    assert!(s.acting_for.is_empty());
    assert_eq!(agent_name(&w), Some("worker"));
    assert_eq!(
        w.acting_for,
        vec!["spiffe://test.example/agent/supervisor".to_owned()]
    );
    assert_eq!(agent_name(&t), Some("third"));
    assert_eq!(
        t.acting_for,
        vec![
            "spiffe://test.example/agent/supervisor".to_owned(),
            "spiffe://test.example/agent/worker".to_owned()
        ],
        "the chain grows across hand-offs; the original actor is never lost"
    );
    assert_ne!(w.session, s.session);
    let Detail::Exec { filename, .. } = &t.event.detail else {
        unreachable!()
    };
    assert_eq!(filename, "/bin/true");
    // Lineage from the worker's fork child leads back to the worker's session root.
    assert_eq!(w.parent_exec_id, s.exec_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_started_before_agentid_is_attributed_from_proc() {
    let a = TestCgroup::new("seed-a");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut child = a
        .command(WORKLOAD)
        .args(["wait-connect", &addr])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until the child is really in the cgroup before the pipeline exists.
    let procs = a.dir.join("cgroup.procs");
    while !std::fs::read_to_string(&procs)
        .expect("procs")
        .contains(&child.id().to_string())
    {
        tokio::task::yield_now().await;
    }
    // Probes, registry and pipeline only now: the process predates all of them, so only
    // the `/proc` seeding can know who it is.
    let Some(mut sensor) = sensor_or_skip("id-seed") else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    let mut p = pipeline(registry(&[("alpha", &a)]));
    p.seed();
    writeln!(child.stdin.take().expect("stdin")).expect("write");
    let events = attributed_until(&mut sensor, &mut p, &[a.id], TIMEOUT, |ev| {
        !kinds(ev, EventKind::Connect).is_empty()
    })
    .await;
    assert!(child.wait().expect("wait").success());
    let c = kinds(&events, EventKind::Connect)[0];
    assert_eq!(c.event.pid, child.id());
    assert_eq!(agent_name(c), Some("alpha"));
    assert!(c.session.is_some());
}
