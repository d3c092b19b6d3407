//! The detection engine: rules over attributed events → deduplicated alerts, plus the
//! credential sightings the store keeps.
//!
//! Secrets: the exec environment and arguments are scanned here and turned into keyed
//! fingerprints; the environment buffer is cleared right after (`SecretEnv::clear`).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::{Duration, SystemTime},
};

use sha2::{Digest, Sha256};

use super::{
    Alert, AlertAgent, ConnectionEvidence, CredentialEvidence, Evidence, ProcessEvidence, Severity,
    rules::Rule,
};
use crate::{
    attribution::AttributedEvent,
    credentials::{
        FingerprintKey, FingerprintPrefix, Observation, Scanner, Source,
        is_well_known_credential_path, read_credential_file,
    },
    event::{Detail, Event, EventKind},
    identity::{Agent, GlobList, Registry},
};

/// A credential sighting for the store (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSighting {
    pub fingerprint: String,
    pub kind: String,
    /// SPIFFE ID or `unregistered`.
    pub agent: String,
    pub source: String,
    pub time: SystemTime,
}

#[derive(Debug, Default)]
pub struct Output {
    /// New alerts and updates of existing ones (same uid, higher count).
    pub alerts: Vec<Alert>,
    pub credentials: Vec<CredentialSighting>,
}

#[derive(Debug)]
struct Sighting {
    first: SystemTime,
    agent: AlertAgent,
    process: ProcessEvidence,
    seen_as: BTreeSet<String>,
}

#[derive(Debug)]
struct CredState {
    /// By agent id (`unregistered` for all unregistered workloads).
    by_agent: BTreeMap<String, Sighting>,
}

pub const UNREGISTERED: &str = "unregistered";

#[derive(Debug)]
pub struct Detector {
    scanner: Scanner,
    /// cgroup globs where an unregistered workload is a shadow agent.
    watch: Option<GlobList>,
    creds: HashMap<[u8; 32], CredState>,
    revoked: Vec<FingerprintPrefix>,
    /// `(a, b)`: agent a declared `credentials.shared_with = [b]`.
    shared: HashSet<(String, String)>,
    alerts: HashMap<String, Alert>,
    drops_alerted: u64,
    /// Credential-file findings by (path, inode, mtime, size): a file opened again and
    /// unchanged is not read again.
    file_cache: HashMap<(std::path::PathBuf, u64, i64, u64), Vec<Observation>>,
}

fn uid(rule: Rule, subject: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(rule.id());
    for s in subject {
        h.update([0]);
        h.update(s);
    }
    hex::encode(&h.finalize()[..8])
}

fn source_label(s: &Source) -> String {
    match s {
        Source::Env { name } => format!("env:{name}"),
        Source::Arg {
            index,
            flag: Some(f),
        } => format!("arg:{index}:{f}"),
        Source::Arg { index, flag: None } => format!("arg:{index}"),
        Source::File { path } => format!("file:{}", path.display()),
    }
}

fn agent_of(ev: &AttributedEvent) -> AlertAgent {
    match &ev.agent {
        Some(a) => AlertAgent {
            id: a.id.clone(),
            name: a.name.clone(),
            owner: a.owner.clone(),
            environment: a.environment.clone(),
            session: ev.session.clone(),
        },
        None => AlertAgent {
            id: UNREGISTERED.into(),
            name: None,
            owner: None,
            environment: None,
            session: None,
        },
    }
}

fn process_of(ev: &AttributedEvent) -> ProcessEvidence {
    let (exe, argv) = match &ev.event.detail {
        Detail::Exec { filename, argv, .. } => (Some(filename.clone()), argv.clone()),
        _ => (ev.exe.clone(), Vec::new()),
    };
    ProcessEvidence {
        exec_id: ev.exec_id.as_ref().map(|id| id.as_str().to_owned()),
        pid: ev.event.pid,
        exe,
        argv,
        uid: ev.event.uid,
        cgroup: ev.event.cgroup.clone(),
        acting_for: ev.acting_for.clone(),
    }
}

impl Detector {
    pub fn new(key: FingerprintKey, watch: Option<GlobList>) -> Self {
        Self {
            scanner: Scanner::new(key),
            watch,
            creds: HashMap::new(),
            revoked: Vec::new(),
            shared: HashSet::new(),
            alerts: HashMap::new(),
            drops_alerted: 0,
            file_cache: HashMap::new(),
        }
    }

    /// Marks credentials matching `prefix` as revoked: any later use raises
    /// `credential-stale`.
    pub fn revoke(&mut self, prefix: FingerprintPrefix) {
        self.revoked.push(prefix);
    }

    /// Every alert raised so far (current state of each incident).
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }

    /// Finds credentials in an exec's environment and arguments, *before* the event goes
    /// anywhere else: the environment is cleared and every argument holding a secret is
    /// redacted in place (`--token=[REDACTED openai:3f9a…]`), so neither the process
    /// table, the store, the API nor any output ever holds the value.
    pub fn scan(&mut self, event: &mut Event) -> Vec<Observation> {
        let Detail::Exec { argv, env, .. } = &mut event.detail else {
            return Vec::new();
        };
        let mut observations = self.scanner.scan_env(env.entries());
        env.clear();
        let arg_bytes: Vec<&[u8]> = argv.iter().map(String::as_bytes).collect();
        let from_args = self.scanner.scan_argv(&arg_bytes);
        redact_args(argv, &from_args);
        observations.extend(from_args);
        observations
    }

    /// Redacts secrets in arguments of a process read from `/proc` (seeded at start).
    pub fn redact(&self, argv: &mut [String]) {
        let arg_bytes: Vec<&[u8]> = argv.iter().map(String::as_bytes).collect();
        let observations = self.scanner.scan_argv(&arg_bytes);
        redact_args(argv, &observations);
    }

    /// Runs every rule on one attributed event and the credentials [`Self::scan`] found in it.
    pub fn observe(
        &mut self,
        ev: &AttributedEvent,
        observations: Vec<Observation>,
        registry: &Registry,
    ) -> Output {
        let mut out = Output::default();
        let agent = ev
            .agent
            .as_ref()
            .and_then(|a| registry.get_str(&a.id).cloned());
        let now = ev.event.time;
        let from_file = self.credential_file(ev, agent.as_deref(), registry, now, &mut out);
        for o in observations.into_iter().chain(from_file) {
            self.credential(ev, agent.as_deref(), &o, now, &mut out);
        }
        self.shadow_scope(ev, agent.as_deref(), now, &mut out);
        if let Some(agent) = agent.as_deref() {
            self.human_privilege(ev, agent, now, &mut out);
            self.policy(ev, agent, now, &mut out);
        }
        self.delegation(ev, now, &mut out);
        out
    }

    /// Raises (or updates) `telemetry-gap` when the kernel's drop counters grew.
    pub fn telemetry_gap(
        &mut self,
        total_drops: u64,
        by_kind: &[(&str, u64)],
        now: SystemTime,
    ) -> Option<Alert> {
        if total_drops <= self.drops_alerted {
            return None;
        }
        let new = total_drops - self.drops_alerted;
        self.drops_alerted = total_drops;
        let detail: Vec<String> = by_kind
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let description = format!(
            "{new} kernel events were lost (ring buffer full); totals: {}",
            detail.join(", ")
        );
        let id = uid(Rule::TelemetryGap, &["kernel"]);
        Some(self.raise(
            id,
            Rule::TelemetryGap,
            Rule::TelemetryGap.severity(),
            "Kernel events were dropped".into(),
            description,
            now,
            vec![],
            Evidence::default(),
        ))
    }

    /// A file open: when the file is a credential file (well known, or declared by the
    /// agent's `credentials.files`), its content is read (no symlinks, size-capped),
    /// fingerprinted and dropped. Two paths holding the same token are one credential.
    /// A registered agent opening a credential file owned by another user (a human's
    /// `~/.aws/credentials`, say) is `human-privilege`.
    fn credential_file(
        &mut self,
        ev: &AttributedEvent,
        agent: Option<&Agent>,
        registry: &Registry,
        now: SystemTime,
        out: &mut Output,
    ) -> Vec<Observation> {
        use std::os::unix::fs::MetadataExt;
        let Detail::Open { path, .. } = &ev.event.detail else {
            return Vec::new();
        };
        let Some(path) = absolute(path, ev.event.pid) else {
            return Vec::new();
        };
        let text = path.to_string_lossy();
        let declared = agent.is_some_and(|a| a.credentials.owns_file(&text))
            || registry
                .agents()
                .iter()
                .any(|a| a.credentials.owns_file(&text));
        if !declared && !is_well_known_credential_path(&text, &[]) {
            return Vec::new();
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return Vec::new();
        };
        if !meta.file_type().is_file() {
            return Vec::new();
        }
        let key = (path.clone(), meta.ino(), meta.mtime(), meta.len());
        let observations = if let Some(cached) = self.file_cache.get(&key) {
            cached.clone()
        } else {
            let Ok(content) = read_credential_file(&path) else {
                return Vec::new();
            };
            let found = self.scanner.scan_file_content(&path, &content);
            drop(content);
            if self.file_cache.len() > 4096 {
                self.file_cache.clear();
            }
            self.file_cache.insert(key, found.clone());
            found
        };
        let owner = meta.uid();
        let human_home = text.starts_with("/home/") || text.starts_with("/root/");
        if let Some(agent) = agent
            && human_home
            && owner != ev.event.uid
            && !observations.is_empty()
        {
            let a = agent_of(ev);
            let alert = self.raise(
                uid(Rule::HumanPrivilege, &[agent.id.as_str(), "file", &text]),
                Rule::HumanPrivilege,
                Severity::High,
                format!("{} read a human's credential file {text}", label_of(&a)),
                format!(
                    "{} (uid {}) opened {text}, owned by uid {owner}",
                    agent.id, ev.event.uid
                ),
                now,
                vec![a],
                Evidence {
                    processes: vec![process_of(ev)],
                    connections: vec![],
                    credential: observations.first().map(|o| CredentialEvidence {
                        fingerprint: o.fingerprint.to_string(),
                        kind: o.kind.to_string(),
                        seen_as: vec![format!("file:{text}")],
                    }),
                },
            );
            out.alerts.push(alert);
        }
        observations
    }

    /// Raises (or updates) `delivery-loss` for a sink that dropped records.
    pub fn delivery_loss(
        &mut self,
        sink: &str,
        dropped_total: u64,
        reason: &str,
        now: SystemTime,
    ) -> Alert {
        self.raise(
            uid(Rule::DeliveryLoss, &[sink]),
            Rule::DeliveryLoss,
            Severity::High,
            format!("Sink {sink} dropped records"),
            format!(
                "{dropped_total} records lost by sink {sink} ({reason}); they remain in the store"
            ),
            now,
            vec![],
            Evidence::default(),
        )
    }

    #[expect(
        clippy::too_many_lines,
        reason = "three rules over one sighting, kept together"
    )]
    fn credential(
        &mut self,
        ev: &AttributedEvent,
        agent: Option<&Agent>,
        o: &Observation,
        now: SystemTime,
        out: &mut Output,
    ) {
        let agent_key = ev
            .agent
            .as_ref()
            .map_or_else(|| UNREGISTERED.to_owned(), |a| a.id.clone());
        let fp = o.fingerprint.to_string();
        let full = o.fingerprint.full_hex();
        let label = source_label(&o.source);
        out.credentials.push(CredentialSighting {
            fingerprint: fp.clone(),
            kind: o.kind.to_string(),
            agent: agent_key.clone(),
            source: label.clone(),
            time: now,
        });
        // Update the sighting, then take owned snapshots so rules can raise alerts.
        let (first, cred, registered, by_agent) = {
            let state = self
                .creds
                .entry(o.fingerprint.hmac)
                .or_insert_with(|| CredState {
                    by_agent: BTreeMap::new(),
                });
            let sighting = state
                .by_agent
                .entry(agent_key.clone())
                .or_insert_with(|| Sighting {
                    first: now,
                    agent: agent_of(ev),
                    process: process_of(ev),
                    seen_as: BTreeSet::new(),
                });
            sighting.seen_as.insert(label);
            let first = sighting.first;
            let seen_as: BTreeSet<String> = state
                .by_agent
                .values()
                .flat_map(|s| s.seen_as.iter().cloned())
                .collect();
            let cred = CredentialEvidence {
                fingerprint: fp.clone(),
                kind: o.kind.to_string(),
                seen_as: seen_as.into_iter().collect(),
            };
            let registered: Vec<String> = state
                .by_agent
                .keys()
                .filter(|k| k.as_str() != UNREGISTERED)
                .cloned()
                .collect();
            let by_agent: Vec<(String, AlertAgent, ProcessEvidence)> = state
                .by_agent
                .iter()
                .map(|(k, s)| (k.clone(), s.agent.clone(), s.process.clone()))
                .collect();
            (first, cred, registered, by_agent)
        };
        let (this_agent, this_process) = (agent_of(ev), process_of(ev));

        // credential-stale: revoked, or older than the agent's max age.
        let revoked = self.revoked.iter().any(|p| p.matches(&o.fingerprint));
        let age = now.duration_since(first).unwrap_or(Duration::ZERO);
        let too_old = agent
            .and_then(|a| a.policy.credential_max_age)
            .is_some_and(|m| age > m);
        if revoked || too_old {
            let why = if revoked {
                format!("{fp} was revoked and is still in use")
            } else {
                format!(
                    "{fp} first seen {} ago, beyond the agent's credential_max_age",
                    humantime::format_duration(Duration::from_secs(age.as_secs()))
                )
            };
            let evidence = Evidence {
                processes: vec![this_process.clone()],
                connections: vec![],
                credential: Some(cred.clone()),
            };
            let title = format!("Stale credential used by {}", label_of(&this_agent));
            let alert = self.raise(
                uid(Rule::CredentialStale, &[&full, &agent_key]),
                Rule::CredentialStale,
                Severity::High,
                title,
                why,
                now,
                vec![this_agent.clone()],
                evidence,
            );
            out.alerts.push(alert);
        }

        // credential-reuse: ≥ 2 registered agents, unless every pair is declared shared.
        if registered.len() >= 2 && !self.all_shared(&registered) {
            let mine: Vec<&(String, AlertAgent, ProcessEvidence)> = by_agent
                .iter()
                .filter(|(k, ..)| k != UNREGISTERED)
                .collect();
            let agents: Vec<AlertAgent> = mine.iter().map(|(_, a, _)| a.clone()).collect();
            let names: Vec<String> = agents.iter().map(label_of).collect();
            let evidence = Evidence {
                processes: mine.iter().map(|(.., p)| p.clone()).collect(),
                connections: vec![],
                credential: Some(cred.clone()),
            };
            let title = format!("Credential used by {} agents", agents.len());
            let desc = format!("{fp} was used by {}", names.join(" and "));
            let alert = self.raise(
                uid(Rule::CredentialReuse, &[&full]),
                Rule::CredentialReuse,
                Severity::High,
                title,
                desc,
                now,
                agents,
                evidence,
            );
            out.alerts.push(alert);
        }

        // shadow-agent (high): an unregistered workload holds a registered agent's credential.
        if !registered.is_empty() && by_agent.iter().any(|(k, ..)| k == UNREGISTERED) {
            let agents: Vec<AlertAgent> = by_agent.iter().map(|(_, a, _)| a.clone()).collect();
            let evidence = Evidence {
                processes: by_agent.iter().map(|(.., p)| p.clone()).collect(),
                connections: vec![],
                credential: Some(cred),
            };
            let desc = format!(
                "{fp} of {} was presented by an unregistered process",
                registered.join(", ")
            );
            let alert = self.raise(
                uid(Rule::ShadowAgent, &["credential", &full]),
                Rule::ShadowAgent,
                Severity::High,
                "Unregistered workload holds a registered agent's credential".into(),
                desc,
                now,
                agents,
                evidence,
            );
            out.alerts.push(alert);
        }
    }

    /// Whether every pair of `agents` is covered by a `shared_with` declaration (either way).
    fn all_shared(&self, agents: &[String]) -> bool {
        agents.iter().enumerate().all(|(i, a)| {
            agents[i + 1..].iter().all(|b| {
                self.shared.contains(&(a.clone(), b.clone()))
                    || self.shared.contains(&(b.clone(), a.clone()))
            })
        })
    }

    /// Refreshes the `shared_with` exemptions from the registry (call on load/reload).
    pub fn set_registry(&mut self, registry: &Registry) {
        self.shared = registry
            .agents()
            .iter()
            .flat_map(|a| {
                a.credentials
                    .shared_with
                    .iter()
                    .map(move |b| (a.id.as_str().to_owned(), b.as_str().to_owned()))
            })
            .collect();
    }

    fn shadow_scope(
        &mut self,
        ev: &AttributedEvent,
        agent: Option<&Agent>,
        now: SystemTime,
        out: &mut Output,
    ) {
        if agent.is_some()
            || !matches!(
                ev.event.kind,
                EventKind::Exec | EventKind::Connect | EventKind::Send
            )
        {
            return;
        }
        let Some(watch) = &self.watch else { return };
        let Some(cgroup) = ev.event.cgroup.as_deref() else {
            return;
        };
        if !watch.is_match(cgroup) {
            return;
        }
        let evidence = Evidence {
            processes: vec![process_of(ev)],
            connections: connection_of(ev).into_iter().collect(),
            credential: None,
        };
        let alert = self.raise(
            uid(Rule::ShadowAgent, &["scope", cgroup]),
            Rule::ShadowAgent,
            Severity::Medium,
            format!("Unregistered workload active in {cgroup}"),
            format!(
                "{} by an unregistered process in watched cgroup {cgroup}",
                ev.event.kind
            ),
            now,
            vec![agent_of(ev)],
            evidence,
        );
        out.alerts.push(alert);
    }

    fn human_privilege(
        &mut self,
        ev: &AttributedEvent,
        agent: &Agent,
        now: SystemTime,
        out: &mut Output,
    ) {
        if ev.event.kind != EventKind::Exec {
            return;
        }
        let uid_ = ev.event.uid;
        let declared = agent.selectors.iter().any(|s| s.uid == Some(uid_));
        let why = if uid_ == 0 && !declared {
            "runs as root".to_owned()
        } else if let Some(login) = ev.loginuid.filter(|_| !declared) {
            format!("runs as uid {uid_} inside the login session of uid {login}")
        } else {
            return;
        };
        let a = agent_of(ev);
        let alert = self.raise(
            uid(
                Rule::HumanPrivilege,
                &[
                    agent.id.as_str(),
                    &uid_.to_string(),
                    &ev.loginuid.unwrap_or(u32::MAX).to_string(),
                ],
            ),
            Rule::HumanPrivilege,
            Severity::Medium,
            format!("{} {why}", label_of(&a)),
            format!(
                "{} {why}, a uid its registration does not declare",
                agent.id
            ),
            now,
            vec![a],
            Evidence {
                processes: vec![process_of(ev)],
                ..Evidence::default()
            },
        );
        out.alerts.push(alert);
    }

    fn policy(&mut self, ev: &AttributedEvent, agent: &Agent, now: SystemTime, out: &mut Output) {
        match (&ev.event.kind, &ev.event.detail) {
            (
                EventKind::Connect | EventKind::Send,
                Detail::Sock {
                    dst_ip, dst_port, ..
                },
            ) => {
                if agent.policy.egress.is_none() || agent.policy.allows_egress(*dst_ip, *dst_port) {
                    return;
                }
                let dst = if dst_ip.is_ipv6() {
                    format!("[{dst_ip}]:{dst_port}")
                } else {
                    format!("{dst_ip}:{dst_port}")
                };
                let a = agent_of(ev);
                let alert = self.raise(
                    uid(Rule::EgressViolation, &[agent.id.as_str(), &dst]),
                    Rule::EgressViolation,
                    Severity::Medium,
                    format!(
                        "{} connected to {dst} outside its egress allowlist",
                        label_of(&a)
                    ),
                    format!(
                        "{} {dst} is not in the egress policy of {}",
                        ev.event.kind, agent.id
                    ),
                    now,
                    vec![a],
                    Evidence {
                        processes: vec![process_of(ev)],
                        connections: connection_of(ev).into_iter().collect(),
                        credential: None,
                    },
                );
                out.alerts.push(alert);
            }
            (EventKind::Exec, Detail::Exec { filename, .. }) => {
                if agent.policy.tools.is_none() || agent.policy.allows_tool(filename) {
                    return;
                }
                let a = agent_of(ev);
                let alert = self.raise(
                    uid(Rule::ToolViolation, &[agent.id.as_str(), filename]),
                    Rule::ToolViolation,
                    Severity::Low,
                    format!(
                        "{} ran {filename} outside its tools allowlist",
                        label_of(&a)
                    ),
                    format!("{filename} is not in the tools policy of {}", agent.id),
                    now,
                    vec![a],
                    Evidence {
                        processes: vec![process_of(ev)],
                        ..Evidence::default()
                    },
                );
                out.alerts.push(alert);
            }
            _ => {}
        }
    }

    fn delegation(&mut self, ev: &AttributedEvent, now: SystemTime, out: &mut Output) {
        if ev.delegation_declared || ev.acting_for.is_empty() || ev.agent.is_none() {
            return;
        }
        if !matches!(ev.event.kind, EventKind::Exec | EventKind::Fork) {
            return;
        }
        let Some(from) = ev.acting_for.last() else {
            return;
        };
        let a = agent_of(ev);
        let to = a.id.clone();
        let alert = self.raise(
            uid(Rule::UndeclaredDelegation, &[from, &to]),
            Rule::UndeclaredDelegation,
            Severity::Medium,
            format!(
                "{from} handed work to {} without a declared delegation",
                label_of(&a)
            ),
            format!(
                "{to} does not list {from} in accepts_delegation_from; chain: {}",
                ev.acting_for.join(" → ")
            ),
            now,
            vec![
                AlertAgent {
                    id: from.clone(),
                    name: None,
                    owner: None,
                    environment: None,
                    session: None,
                },
                a,
            ],
            Evidence {
                processes: vec![process_of(ev)],
                ..Evidence::default()
            },
        );
        out.alerts.push(alert);
    }

    /// New incident, or an update of the one with the same uid: count + 1, last seen now,
    /// agents and evidence refreshed (a reuse alert gains the third agent, say).
    #[expect(clippy::too_many_arguments, reason = "one alert's parts")]
    fn raise(
        &mut self,
        uid: String,
        rule: Rule,
        severity: Severity,
        title: String,
        description: String,
        now: SystemTime,
        agents: Vec<AlertAgent>,
        evidence: Evidence,
    ) -> Alert {
        let alert = self.alerts.entry(uid.clone()).or_insert_with(|| Alert {
            uid,
            rule: rule.id(),
            title: String::new(),
            description: String::new(),
            severity,
            first_seen: now,
            last_seen: now,
            count: 0,
            agents: Vec::new(),
            evidence: Evidence::default(),
            tags: rule.tags(),
        });
        alert.count += 1;
        alert.last_seen = alert.last_seen.max(now);
        alert.severity = alert.severity.max(severity);
        alert.title = title;
        alert.description = description;
        alert.agents = agents;
        alert.evidence = evidence;
        alert.clone()
    }
}

/// Replaces each argument that held a secret: `--flag=` prefixes are kept so the
/// command line stays readable.
fn redact_args(argv: &mut [String], found: &[Observation]) {
    for o in found {
        let Source::Arg { index, .. } = &o.source else {
            continue;
        };
        let Some(arg) = argv.get_mut(*index) else {
            continue;
        };
        let keep = if arg.starts_with('-') {
            arg.find('=').map_or(0, |i| i + 1)
        } else {
            0
        };
        *arg = format!("{}[REDACTED {}]", &arg[..keep], o.fingerprint);
    }
}

/// An opened path made absolute: relative paths are resolved against the process's
/// working directory (read once, from `/proc`; `None` if the process is gone).
fn absolute(path: &str, pid: u32) -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(path);
    if p.is_absolute() {
        return Some(p.to_owned());
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    Some(cwd.join(p))
}

fn connection_of(ev: &AttributedEvent) -> Option<ConnectionEvidence> {
    match &ev.event.detail {
        Detail::Sock {
            dst_ip,
            dst_port,
            protocol,
        } => Some(ConnectionEvidence {
            dst_ip: *dst_ip,
            dst_port: *dst_port,
            protocol: protocol.to_string(),
        }),
        _ => None,
    }
}

fn label_of(a: &AlertAgent) -> String {
    a.name.clone().unwrap_or_else(|| a.id.clone())
}
