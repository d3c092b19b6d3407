//! Each rule in isolation, without a kernel: an attributed event made by hand, the
//! findings the redactor would hand over, the rule's verdict. And the catalogue against the
//! README's detections table.
use std::{
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::*;
use crate::{
    attribution::{AgentRef, AttributedEvent, ProcIdentity},
    credentials::{Findings, FingerprintKey, Observation, OpenedFile, Scanner},
    detect::{Alert, Detector, Principal},
    event::{Detail, Event, EventKind, Protocol, SecretEnv},
    identity::Registry,
};

const A: &str = "spiffe://t.example/agent/alpha";
const B: &str = "spiffe://t.example/agent/beta";
const KEY: &str = "sk-proj-Zq8X2mN4vB7cL1kJ9hG3fD5sA0pO6iU8yT2rE4wQ";

fn registry(extra_a: &str, extra_b: &str) -> Registry {
    let r = Registry::parse_str(
        &format!(
            "[[agent]]\nid = \"{A}\"\nname = \"alpha\"\n[[agent.selectors]]\nuid = 1001\n{extra_a}\n\
             [[agent]]\nid = \"{B}\"\nname = \"beta\"\n[[agent.selectors]]\nuid = 1002\n{extra_b}\n"
        ),
        "t.toml",
    );
    assert!(r.errors().is_empty(), "{:?}", r.errors());
    r
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn event(agent: Option<&str>, kind: EventKind, detail: Detail) -> AttributedEvent {
    let mut identity = ProcIdentity::unregistered();
    identity.agent = agent.map(|id| AgentRef {
        id: id.to_owned(),
        name: id.rsplit('/').next().map(str::to_owned),
        owner: None,
        environment: None,
    });
    AttributedEvent {
        transition: None,
        event: Event {
            kind,
            time: at(0),
            ktime_ns: 0,
            proc_start_ns: None,
            pid: 4242,
            ppid: Some(1),
            tid: 4242,
            uid: 1001,
            gid: 1001,
            cgroup_id: 7,
            cgroup: Some("/agents/x".into()),
            comm: "tool".into(),
            blocked: false,
            detail,
        },
        exec_id: None,
        parent_exec_id: None,
        identity: Arc::new(identity),
        exe: Some("/usr/bin/tool".into()),
        loginuid: None,
    }
}

fn exec(agent: Option<&str>, filename: &str) -> AttributedEvent {
    event(
        agent,
        EventKind::Exec,
        Detail::Exec {
            filename: filename.into(),
            argv: vec![filename.into()],
            argv_truncated: false,
            argv_missing: false,
            scan_incomplete: None,
            loginuid: None,
            env: SecretEnv::new(b""),
        },
    )
}

fn connect(agent: Option<&str>, ip: &str, port: u16) -> AttributedEvent {
    event(
        agent,
        EventKind::Connect,
        Detail::Sock {
            dst_ip: ip.parse::<IpAddr>().unwrap(),
            dst_port: port,
            protocol: Protocol::Tcp,
            dst_names: Vec::new(),
        },
    )
}

/// The findings of an exec carrying `KEY` in its environment, under `key`.
fn holding(key: FingerprintKey) -> Findings {
    let entry = format!("OPENAI_API_KEY={KEY}");
    let observations: Vec<Observation> =
        Scanner::new(key).scan_env(std::iter::once(entry.as_bytes()));
    assert_eq!(observations.len(), 1);
    Findings {
        observations,
        file: None,
    }
}

fn run(d: &mut Detector, ev: &AttributedEvent, f: &Findings, r: &Registry) -> Vec<Alert> {
    d.observe(ev, f, r).alerts
}

/// A key's findings, the two agents' registry and a detector that knows it.
fn rig(extra_a: &str, extra_b: &str) -> (Findings, Registry, Detector) {
    let findings = holding(FingerprintKey::ephemeral().unwrap());
    let registry = registry(extra_a, extra_b);
    let mut detector = Detector::new(None);
    detector.set_registry(&registry);
    (findings, registry, detector)
}

fn rules_of(alerts: &[Alert]) -> Vec<&'static str> {
    alerts.iter().map(|a| a.rule).collect()
}

#[test]
fn credential_reuse_needs_two_registered_agents_not_declared_shared() {
    let (f, r, mut d) = rig("", "");
    // One agent, twice: its own credential.
    assert!(run(&mut d, &exec(Some(A), "/bin/a"), &f, &r).is_empty());
    assert!(run(&mut d, &exec(Some(A), "/bin/a"), &f, &r).is_empty());
    // A second agent: one incident naming both, at high.
    let out = d.observe(&exec(Some(B), "/bin/b"), &f, &r);
    assert_eq!(rules_of(&out.alerts), ["credential-reuse"]);
    let alert = &out.alerts[0];
    assert_eq!(alert.severity, Severity::High);
    let ids: Vec<&str> = alert.agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, [A, B]);
    assert_eq!(alert.agents[0].id, Principal::Agent(A.parse().unwrap()));
    let cred = alert.evidence.credential.as_ref().unwrap();
    assert_eq!(cred.seen_as, ["env:OPENAI_API_KEY"]);
    assert!(cred.fingerprint.starts_with("openai:"));
    // The store's sighting names the principal.
    assert_eq!(out.credentials.len(), 1);
    assert_eq!(
        out.credentials[0].agent,
        Principal::Agent(B.parse().unwrap())
    );
    // Seen again: the same incident, counted.
    let again = run(&mut d, &exec(Some(B), "/bin/b"), &f, &r);
    assert_eq!(again[0].uid, alert.uid);
    assert_eq!(again[0].count, 2);
    // Canary: no value in any alert.
    assert!(!serde_json::to_string(&again).unwrap().contains(KEY));
}

#[test]
fn credential_reuse_declared_shared_is_quiet() {
    let (f, r, mut d) = rig(&format!("[agent.credentials]\nshared_with = [\"{B}\"]"), "");
    assert!(run(&mut d, &exec(Some(A), "/bin/a"), &f, &r).is_empty());
    assert!(run(&mut d, &exec(Some(B), "/bin/b"), &f, &r).is_empty());
}

#[test]
fn credential_stale_by_age_and_by_revocation() {
    let (f, r, mut d) = rig("[agent.policy]\ncredential_max_age = \"1h\"", "");
    let mut young = exec(Some(A), "/bin/a");
    assert!(run(&mut d, &young, &f, &r).is_empty());
    young.event.time = at(3599);
    assert!(run(&mut d, &young, &f, &r).is_empty(), "within the max age");
    young.event.time = at(3601);
    let stale = run(&mut d, &young, &f, &r);
    assert_eq!(rules_of(&stale), ["credential-stale"]);
    assert!(
        stale[0].description.contains("credential_max_age"),
        "{}",
        stale[0].description
    );
    // Beta has no max age; revoking the fingerprint makes its next use stale.
    assert!(
        run(&mut d, &exec(Some(B), "/bin/b"), &f, &r)
            .iter()
            .all(|a| a.rule != "credential-stale")
    );
    let prefix = f.observations[0].fingerprint.to_string().parse().unwrap();
    d.revoke(prefix);
    let revoked = run(&mut d, &exec(Some(B), "/bin/b"), &f, &r);
    let stale: Vec<_> = revoked
        .iter()
        .filter(|a| a.rule == "credential-stale")
        .collect();
    assert_eq!(stale.len(), 1);
    assert!(stale[0].description.contains("revoked"));
}

#[test]
fn shadow_agent_in_a_watched_scope_and_with_a_registered_credential() {
    let r = registry("", "");
    let watch = GlobList::new(&["/agents/**"]).unwrap();
    let mut d = Detector::new(Some(watch));
    // Unregistered, in the watched scope: medium.
    let out = run(&mut d, &exec(None, "/bin/sh"), &Findings::default(), &r);
    assert_eq!(rules_of(&out), ["shadow-agent"]);
    assert_eq!(out[0].severity, Severity::Medium);
    assert_eq!(out[0].agents[0].id, Principal::Unregistered);
    // A registered agent there is not a shadow; nor is an unregistered one elsewhere.
    assert!(run(&mut d, &exec(Some(A), "/bin/sh"), &Findings::default(), &r).is_empty());
    let mut outside = exec(None, "/bin/sh");
    outside.event.cgroup = Some("/system.slice/cron.service".into());
    assert!(run(&mut d, &outside, &Findings::default(), &r).is_empty());
    // Unregistered, outside, holding alpha's credential: high.
    let key = FingerprintKey::ephemeral().unwrap();
    let f = holding(key);
    assert!(run(&mut d, &exec(Some(A), "/bin/a"), &f, &r).is_empty());
    let out = run(&mut d, &outside, &f, &r);
    assert_eq!(rules_of(&out), ["shadow-agent"]);
    assert_eq!(out[0].severity, Severity::High);
    let ids: Vec<&str> = out[0].agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, [A, "unregistered"]);
}

#[test]
fn human_privilege_root_login_session_and_a_humans_file() {
    let r = registry("", "[[agent.selectors]]\nuid = 0");
    let mut d = Detector::new(None);
    let mut root = exec(Some(A), "/bin/a");
    root.event.uid = 0;
    let out = run(&mut d, &root, &Findings::default(), &r);
    assert_eq!(rules_of(&out), ["human-privilege"]);
    assert_eq!(out[0].title, "alpha runs as root");
    assert_eq!(out[0].severity, Severity::Medium);
    // Beta declares uid 0: quiet.
    let mut declared = exec(Some(B), "/bin/b");
    declared.event.uid = 0;
    assert!(run(&mut d, &declared, &Findings::default(), &r).is_empty());
    // Inside a human's login session.
    let mut login = exec(Some(A), "/bin/a");
    login.loginuid = Some(1000);
    // As alpha's declared uid: quiet; as another uid: the human's session shows.
    assert!(run(&mut d, &login, &Findings::default(), &r).is_empty());
    login.event.uid = 1500;
    let out = run(&mut d, &login, &Findings::default(), &r);
    assert_eq!(
        out[0].title,
        "alpha runs as uid 1500 inside the login session of uid 1000"
    );
    // Another user's credential file under /home: high; the agent's own file: quiet.
    let key = FingerprintKey::ephemeral().unwrap();
    let mut f = holding(key);
    let open = event(
        Some(A),
        EventKind::Open,
        Detail::Open {
            path: "/tmp/innocent".into(),
            open_flags: 0,
            inode: None,
        },
    );
    f.file = Some(OpenedFile {
        path: PathBuf::from("/home/alice/.aws/credentials"),
        via: Some(PathBuf::from("/tmp/innocent")),
        owner: 1000,
    });
    let out = run(&mut d, &open, &f, &r);
    let hp: Vec<_> = out.iter().filter(|a| a.rule == "human-privilege").collect();
    assert_eq!(hp.len(), 1);
    assert_eq!(hp[0].severity, Severity::High);
    assert_eq!(
        hp[0].evidence.credential.as_ref().unwrap().seen_as,
        ["file:/home/alice/.aws/credentials"]
    );
    assert!(
        hp[0]
            .description
            .contains("opened /home/alice/.aws/credentials through /tmp/innocent,"),
        "{}",
        hp[0].description
    );
    f.file = Some(OpenedFile {
        path: PathBuf::from("/home/alpha/.aws/credentials"),
        via: None,
        owner: 1001,
    });
    assert!(
        run(&mut d, &open, &f, &r)
            .iter()
            .all(|a| a.rule != "human-privilege")
    );
}

#[test]
fn egress_and_tools_policies() {
    let r = registry(
        "[agent.policy]\negress = [\"127.0.0.1:8080\"]\ntools = [\"/usr/bin/git\"]",
        "",
    );
    let mut d = Detector::new(None);
    let none = Findings::default();
    assert!(run(&mut d, &connect(Some(A), "127.0.0.1", 8080), &none, &r).is_empty());
    let out = run(&mut d, &connect(Some(A), "127.0.0.1", 9090), &none, &r);
    assert_eq!(rules_of(&out), ["egress-violation"]);
    assert_eq!(
        out[0].title,
        "alpha connected to 127.0.0.1:9090 outside its egress allowlist"
    );
    assert_eq!(out[0].evidence.connections[0].dst_port, 9090);
    let out = run(&mut d, &connect(Some(A), "::1", 443), &none, &r);
    assert!(out[0].title.contains("[::1]:443"), "{}", out[0].title);
    // Beta has no policy: unrestricted.
    assert!(run(&mut d, &connect(Some(B), "127.0.0.1", 9090), &none, &r).is_empty());
    assert!(run(&mut d, &exec(Some(A), "/usr/bin/git"), &none, &r).is_empty());
    let out = run(&mut d, &exec(Some(A), "/usr/bin/curl"), &none, &r);
    assert_eq!(rules_of(&out), ["tool-violation"]);
    assert_eq!(out[0].severity, Severity::Low);
    assert!(run(&mut d, &exec(Some(B), "/usr/bin/curl"), &none, &r).is_empty());
}

fn request(agent: Option<&str>, host: &str) -> AttributedEvent {
    event(
        agent,
        EventKind::Request,
        Detail::Request {
            method: "GET".into(),
            host: Some(host.into()),
            path: "/".into(),
            http_version: "1.1".into(),
            tls_fn: crate::event::TlsFn::SslWrite,
            credential_headers: Vec::new(),
            continued: false,
            headers: SecretEnv::default(),
        },
    )
}

/// The `Host` an agent sends over TLS narrows what its connection was allowed: in a policy
/// that names hosts, a request for a host it does not name is a violation even on a
/// connection the policy allowed (domain fronting); it never widens anything.
#[test]
fn request_hosts_outside_a_named_policy_are_violations() {
    let r = registry(
        "[agent.policy]\negress = [\"127.0.0.1:*\", \"api.openai.com:443\", \"*.example.org:8443\"]",
        "[agent.policy]\negress = [\"127.0.0.0/8:*\"]",
    );
    let mut d = Detector::new(None);
    let none = Findings::default();
    // No connect seen yet: port 443 assumed.
    assert!(run(&mut d, &request(Some(A), "API.OpenAI.com."), &none, &r).is_empty());
    let out = run(&mut d, &request(Some(A), "evil.example"), &none, &r);
    assert_eq!(rules_of(&out), ["egress-violation"]);
    assert_eq!(
        out[0].title,
        "alpha sent a request for https://evil.example:443 outside its egress allowlist"
    );
    assert_eq!(out[0].action, Some("allowed"));
    // The connection (allowed by address) carries the port the host is judged with.
    assert!(run(&mut d, &connect(Some(A), "127.0.0.1", 8443), &none, &r).is_empty());
    assert!(run(&mut d, &request(Some(A), "files.example.org"), &none, &r).is_empty());
    let out = run(&mut d, &request(Some(A), "api.openai.com"), &none, &r);
    assert!(
        out[0].title.contains("https://api.openai.com:8443"),
        "{}",
        out[0].title
    );
    // An address literal is judged by the address rules.
    assert!(run(&mut d, &request(Some(A), "127.0.0.1"), &none, &r).is_empty());
    assert_eq!(
        rules_of(&run(&mut d, &request(Some(A), "[::1]"), &none, &r)),
        ["egress-violation"]
    );
    // Beta's policy names no host: its requests' hosts are not judged.
    assert!(run(&mut d, &request(Some(B), "evil.example"), &none, &r).is_empty());
    // After the process exits its connection is forgotten (443 again).
    let exit = event(
        Some(A),
        EventKind::Exit,
        Detail::Exit {
            exit_code: Some(0),
            signal: None,
        },
    );
    assert!(run(&mut d, &exit, &none, &r).is_empty());
    assert!(run(&mut d, &request(Some(A), "api.openai.com"), &none, &r).is_empty());
}

#[test]
fn undeclared_delegation_unless_declared() {
    let r = registry("", "");
    let mut d = Detector::new(None);
    let mut handed = exec(Some(B), "/bin/b");
    let mut identity = (*handed.identity).clone();
    identity.acting_for = vec![A.to_owned()];
    identity.delegation_declared = false;
    handed.identity = Arc::new(identity.clone());
    let out = run(&mut d, &handed, &Findings::default(), &r);
    assert_eq!(rules_of(&out), ["undeclared-delegation"]);
    let ids: Vec<&str> = out[0].agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, [A, B]);
    identity.delegation_declared = true;
    handed.identity = Arc::new(identity);
    assert!(run(&mut d, &handed, &Findings::default(), &r).is_empty());
}

#[test]
fn telemetry_gap_once_per_growth_and_delivery_loss_per_sink() {
    let mut d = Detector::new(None);
    assert!(d.telemetry_gap(0, &[], at(0)).is_none());
    let gap = d
        .telemetry_gap(5, &[("exec", 5), ("fork", 0)], at(1))
        .unwrap();
    assert_eq!(gap.rule, "telemetry-gap");
    assert!(
        gap.description.starts_with("5 kernel events were lost"),
        "{}",
        gap.description
    );
    assert!(
        gap.description.ends_with("totals: exec 5"),
        "{}",
        gap.description
    );
    assert!(d.telemetry_gap(5, &[("exec", 5)], at(2)).is_none());
    assert_eq!(d.telemetry_gap(7, &[("exec", 7)], at(3)).unwrap().count, 2);
    let loss = d.delivery_loss("siem", 3, "SpoolFull", at(4));
    assert_eq!((loss.rule, loss.count), ("delivery-loss", 1));
    assert_eq!(d.delivery_loss("siem", 9, "SpoolFull", at(5)).count, 2);
    assert_eq!(d.delivery_loss("other", 1, "SpoolFull", at(5)).count, 1);
    assert_eq!(d.alerts().count(), 3);
}

#[test]
fn catalogue_is_complete_and_unique() {
    let mut ids: Vec<&str> = CATALOGUE.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), CATALOGUE.len());
    for rule in all(None, ServiceDomains::default()) {
        assert!(
            info(rule.info().id).is_some(),
            "{} not in CATALOGUE",
            rule.info().id
        );
    }
    assert_eq!(info("credential-reuse"), Some(&CREDENTIAL_REUSE));
    assert_eq!(
        CREDENTIAL_REUSE.tag_line(),
        "ASI03 · T3 T9 · L4 L7 · MEASURE 2.7, MANAGE 4.1"
    );
    assert_eq!(TELEMETRY_GAP.tag_line(), "T8 · L5 · MEASURE 2.4");
}

/// The README's detections table is the catalogue: same rules, in order, with each
/// rule's default severity first and its tags.
#[test]
fn readme_table_matches_the_catalogue() {
    let readme = include_str!("../../../../README.md");
    let table = readme
        .split("## Detections")
        .nth(1)
        .and_then(|s| s.split("\n\n").nth(1))
        .unwrap();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(2)
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), CATALOGUE.len(), "{table}");
    for (row, rule) in rows.iter().zip(CATALOGUE) {
        assert_eq!(row.len(), 4, "{row:?}");
        assert_eq!(row[0], format!("`{}`", rule.id));
        assert_eq!(
            row[2].split('/').next(),
            Some(rule.severity.as_str()),
            "{}: the first severity is the default",
            rule.id
        );
        assert_eq!(row[3], rule.tag_line(), "{}", rule.id);
    }
}

#[test]
fn principal_is_a_bare_string_on_the_wire() {
    let agent = Principal::Agent(A.parse().unwrap());
    assert_eq!(serde_json::to_value(&agent).unwrap(), A);
    assert_eq!(
        serde_json::to_value(Principal::Unregistered).unwrap(),
        "unregistered"
    );
    assert!(Principal::Unregistered > agent, "sorts as its string");
}

/// An exec by `agent` in `session` holding a token agentid issued to alpha's session
/// `alpha/1-1` (live or not), as the redactor hands it over once the issuer recognised it.
fn token_held(agent: Option<&str>, session: &str, live: bool) -> (AttributedEvent, Findings) {
    let mut ev = exec(agent, "/bin/tool");
    let mut identity = (*ev.identity).clone();
    identity.session = agent.map(|_| session.to_owned());
    ev.identity = Arc::new(identity);
    let key = FingerprintKey::from_fleet_key(&"ab".repeat(32)).unwrap();
    let mut o = Scanner::new(key).scan_env(std::iter::once(
        &b"SVID=eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"[..],
    ));
    assert_eq!(o.len(), 1, "{o:?}");
    o[0].issued = Some(Box::new(crate::credentials::TokenOrigin {
        jti: "jti-1".into(),
        kid: "kid-1".into(),
        agent: A.into(),
        session: "alpha/1-1".into(),
        acting_for: vec![B.into()],
        exp: 1_700_000_300,
        session_live: live,
    }));
    (
        ev,
        Findings {
            observations: o,
            file: None,
        },
    )
}

#[test]
fn an_issued_token_held_outside_its_session_is_a_transfer_and_after_it_stale() {
    let r = registry("", "");
    let mut d = Detector::new(None);
    d.set_registry(&r);
    // Its own session: silent, however often.
    let (ev, f) = token_held(Some(A), "alpha/1-1", true);
    assert!(run(&mut d, &ev, &f, &r).is_empty());
    assert!(run(&mut d, &ev, &f, &r).is_empty());
    // Another agent: one transfer (not also a reuse), naming both sessions and the chain.
    let (ev, f) = token_held(Some(B), "beta/2-2", true);
    let out = run(&mut d, &ev, &f, &r);
    assert_eq!(rules_of(&out), ["issued-token-transfer"]);
    let a = &out[0];
    assert_eq!(a.severity, Severity::High);
    assert_eq!(a.agents[0].id, A);
    assert_eq!(a.agents[0].session.as_deref(), Some("alpha/1-1"));
    assert_eq!(a.agents[1].id, B);
    assert_eq!(a.agents[1].session.as_deref(), Some("beta/2-2"));
    assert!(
        a.description.contains("jti-1") && a.description.contains("env:SVID"),
        "{}",
        a.description
    );
    assert!(
        a.description.contains(&format!("acting for {B}")),
        "{}",
        a.description
    );
    let token = a
        .evidence
        .credential
        .as_ref()
        .unwrap()
        .token
        .as_ref()
        .unwrap();
    assert_eq!(token.jti, "jti-1");
    // The same holder again: the same incident.
    assert_eq!(run(&mut d, &ev, &f, &r)[0].uid, a.uid);
    // Another session of the same agent, and an unregistered process: transfers too.
    let (ev, f) = token_held(Some(A), "alpha/3-3", true);
    assert_eq!(
        rules_of(&run(&mut d, &ev, &f, &r)),
        ["issued-token-transfer"]
    );
    // After the session ended, its own holder: stale, with the reason.
    let (ev, f) = token_held(Some(A), "alpha/1-1", false);
    let out = run(&mut d, &ev, &f, &r);
    assert_eq!(rules_of(&out), ["credential-stale"]);
    assert_eq!(out[0].reason, Some("session-ended"));
    assert!(
        out[0].description.contains("alpha/1-1"),
        "{}",
        out[0].description
    );
    // (An unregistered holder of a registered agent's credential is a shadow agent too.)
    let (ev, f) = token_held(None, "", false);
    assert_eq!(
        rules_of(&run(&mut d, &ev, &f, &r)),
        ["credential-stale", "issued-token-transfer", "shadow-agent"]
    );
}
