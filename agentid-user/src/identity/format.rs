//! The registration file format (`[[agent]]` tables) and its validation.
//!
//! serde parses into `Raw*` structs whose values keep their spans; the checks then
//! turn them into [`Agent`]s, recording every problem with its line and dotted field.
use std::{collections::HashMap, fmt, ops::Range, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{
    container,
    policy::{Dest, EgressRule, GlobList, Policy},
    registry::{Agent, ConfigError, Credentials, Origin},
    selector::{Glob, SelectorSet},
    spiffe::SpiffeId,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    agent: Vec<Spanned<RawAgent>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: Spanned<String>,
    name: Option<String>,
    owner: Option<String>,
    environment: Option<String>,
    selectors: Option<Spanned<Vec<Spanned<RawSelectorSet>>>>,
    policy: Option<RawPolicy>,
    credentials: Option<RawCredentials>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelectorSet {
    cgroup: Option<Spanned<String>>,
    systemd_unit: Option<Spanned<String>>,
    container_id: Option<Spanned<String>>,
    k8s_pod_uid: Option<Spanned<String>>,
    k8s_namespace: Option<Spanned<String>>,
    uid: Option<u32>,
    gid: Option<u32>,
    user: Option<Spanned<String>>,
    exe: Option<Spanned<String>>,
    exe_sha256: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    egress: Option<Vec<Spanned<String>>>,
    tools: Option<Vec<Spanned<String>>>,
    credential_max_age: Option<Spanned<String>>,
    #[serde(default)]
    accepts_delegation_from: Vec<Spanned<String>>,
    #[serde(default)]
    enforce: bool,
    max_hosts: Option<usize>,
    hosts: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    #[serde(default)]
    files: Vec<Spanned<String>>,
    #[serde(default)]
    shared_with: Vec<Spanned<String>>,
}

/// Collects a file's errors, each located by the span of the offending value.
struct Checker<'a> {
    text: &'a str,
    origin: &'a str,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Checker<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        // Spans are on char boundaries; the fallback only guards a toml bug.
        self.text
            .get(..end)
            .unwrap_or(self.text)
            .matches('\n')
            .count()
            + 1
    }

    fn warn(&mut self, span: &Range<usize>, field: &str, message: impl fmt::Display) {
        self.warnings.push(ConfigError {
            file: self.origin.to_owned(),
            line: self.line(span.start),
            field: field.to_owned(),
            message: message.to_string(),
        });
    }

    fn error(&mut self, span: &Range<usize>, field: &str, message: impl fmt::Display) {
        self.errors.push(ConfigError {
            file: self.origin.to_owned(),
            line: self.line(span.start),
            field: field.to_owned(),
            message: message.to_string(),
        });
    }

    /// Runs `parse` on a spanned string, recording `"value": error` on failure.
    fn value<T, E: fmt::Display>(
        &mut self,
        v: &Spanned<String>,
        field: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        match parse(v.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(&v.span(), field, format_args!("{:?}: {e}", v.get_ref()));
                None
            }
        }
    }

    fn spiffe_ids(&mut self, ids: &[Spanned<String>], field: &str) -> Vec<SpiffeId> {
        ids.iter()
            .filter_map(|id| self.value(id, field, SpiffeId::parse))
            .collect()
    }

    fn globs(&mut self, patterns: &[Spanned<String>], field: &str) -> Option<GlobList> {
        let mut ok = true;
        for p in patterns {
            ok &= self
                .value(p, field, |s| Glob::new(s).map_err(|e| e.kind().to_string()))
                .is_some();
        }
        // Each pattern compiled on its own above, so the set only fails on resource
        // limits; report that at the first pattern.
        let list = GlobList::new(&patterns.iter().map(Spanned::get_ref).collect::<Vec<_>>());
        match (ok, list) {
            (true, Ok(list)) => Some(list),
            (true, Err(e)) => {
                let span = patterns.first().map_or(0..0, Spanned::span);
                self.error(&span, field, e);
                None
            }
            (false, _) => None,
        }
    }
}

/// Parses and validates one file: its agents, or every error found in it.
/// `Ok` carries the warnings too.
pub(super) fn parse_file(
    text: &str,
    origin: &str,
) -> Result<(Vec<Agent>, Vec<ConfigError>), Vec<ConfigError>> {
    let mut ck = Checker {
        text,
        origin,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    // Syntax first: a syntax error has no meaningful field, and the parsed tree
    // locates the field of a schema error (which serde reports by span only).
    let tree = match toml::de::DeTable::parse(text) {
        Ok(tree) => tree,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            ck.error(&span, "(toml syntax)", e.message().trim_end());
            return Err(ck.errors);
        }
    };
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let field = field_at(tree.get_ref(), &span, e.message());
            ck.error(&span, &field, e.message().trim_end());
            return Err(ck.errors);
        }
    };
    let mut agents = Vec::new();
    let mut seen: HashMap<SpiffeId, usize> = HashMap::new();
    for raw_agent in &raw.agent {
        let line = ck.line(raw_agent.span().start);
        if let Some(agent) = check_agent(&mut ck, raw_agent.get_ref(), line) {
            if let Some(first) = seen.insert(agent.id.clone(), line) {
                ck.error(
                    &raw_agent.get_ref().id.span(),
                    "agent.id",
                    format_args!(
                        "{:?} is already registered at {origin}:{first}",
                        agent.id.as_str()
                    ),
                );
            }
            agents.push(agent);
        }
    }
    if ck.errors.is_empty() {
        Ok((agents, ck.warnings))
    } else {
        Err(ck.errors)
    }
}

fn check_agent(ck: &mut Checker<'_>, raw: &RawAgent, line: usize) -> Option<Agent> {
    let RawAgent {
        id,
        name,
        owner,
        environment,
        selectors,
        policy,
        credentials,
    } = raw;
    let errors_before = ck.errors.len();
    let id = ck.value(id, "agent.id", SpiffeId::parse);

    let mut sets = Vec::new();
    match selectors {
        None => {
            let span = line_start(ck, line);
            ck.error(
                &span,
                "agent.selectors",
                "an agent needs at least one selector set ([[agent.selectors]])",
            );
        }
        Some(list) if list.get_ref().is_empty() => ck.error(
            &list.span(),
            "agent.selectors",
            "an agent needs at least one selector set",
        ),
        Some(list) => {
            for set in list.get_ref() {
                if let Some(set) = check_selector_set(ck, set) {
                    sets.push(set);
                }
            }
        }
    }

    let policy = policy
        .as_ref()
        .map(|p| check_policy(ck, p))
        .unwrap_or_default();
    let credentials = match credentials {
        Some(RawCredentials { files, shared_with }) => Credentials {
            files: ck
                .globs(files, "agent.credentials.files")
                .unwrap_or_default(),
            shared_with: ck.spiffe_ids(shared_with, "agent.credentials.shared_with"),
        },
        None => Credentials {
            files: GlobList::default(),
            shared_with: Vec::new(),
        },
    };
    if ck.errors.len() > errors_before {
        return None;
    }
    Some(Agent {
        id: id?,
        name: name.clone(),
        owner: owner.clone(),
        environment: environment.clone(),
        selectors: sets,
        policy,
        credentials,
        origin: Origin {
            file: ck.origin.to_owned(),
            line,
        },
    })
}

/// The span of the start of a 1-based line (for errors about something missing).
fn line_start(ck: &Checker<'_>, line: usize) -> Range<usize> {
    let start = ck
        .text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    start..start
}

fn check_selector_set(ck: &mut Checker<'_>, set: &Spanned<RawSelectorSet>) -> Option<SelectorSet> {
    let RawSelectorSet {
        cgroup,
        systemd_unit,
        container_id,
        k8s_pod_uid,
        k8s_namespace,
        uid,
        gid,
        user,
        exe,
        exe_sha256,
    } = set.get_ref();
    let errors_before = ck.errors.len();
    let out = SelectorSet {
        cgroup: cgroup
            .as_ref()
            .and_then(|v| ck.value(v, "agent.selectors.cgroup", cgroup_glob)),
        systemd_unit: systemd_unit
            .as_ref()
            .and_then(|v| ck.value(v, "agent.selectors.systemd_unit", unit)),
        container_id: container_id.as_ref().and_then(|v| {
            ck.value(v, "agent.selectors.container_id", |s| {
                hex64(s, "a container id").map(|()| s.to_owned())
            })
        }),
        k8s_pod_uid: k8s_pod_uid
            .as_ref()
            .and_then(|v| ck.value(v, "agent.selectors.k8s_pod_uid", pod_uid)),
        k8s_namespace: k8s_namespace
            .as_ref()
            .and_then(|v| ck.value(v, "agent.selectors.k8s_namespace", non_empty)),
        uid: *uid,
        gid: *gid,
        user: user
            .as_ref()
            .and_then(|v| ck.value(v, "agent.selectors.user", non_empty)),
        exe: exe
            .as_ref()
            .and_then(|v| ck.value(v, "agent.selectors.exe", exe_glob)),
        exe_sha256: exe_sha256.as_ref().and_then(|v| {
            ck.value(v, "agent.selectors.exe_sha256", |s| {
                let s = s.to_ascii_lowercase();
                hex64(&s, "a sha256").map(|()| s)
            })
        }),
    };
    if ck.errors.len() > errors_before {
        return None;
    }
    if out.is_empty() {
        ck.error(
            &set.span(),
            "agent.selectors",
            "an empty selector set would match every process",
        );
        return None;
    }
    Some(out)
}

fn check_policy(ck: &mut Checker<'_>, raw: &RawPolicy) -> Policy {
    let RawPolicy {
        egress,
        tools,
        credential_max_age,
        accepts_delegation_from,
        enforce,
        max_hosts,
        hosts,
    } = raw;
    Policy {
        enforce: *enforce,
        max_hosts: *max_hosts,
        hosts: hosts.as_ref().and_then(|h| ck.globs(h, "agent.policy.hosts")),
        egress: egress.as_ref().map(|rules| {
            rules
                .iter()
                .filter_map(|r| {
                    let rule = ck.value(r, "agent.policy.egress", EgressRule::parse)?;
                    if let Dest::Name(p) = &rule.dest
                        && let Some(zone) = p.open_zone()
                    {
                        ck.warn(
                            &r.span(),
                            "agent.policy.egress",
                            format_args!(
                                "{:?}: a wildcard over {zone}, where anyone can create names, allows strangers' hosts too",
                                r.get_ref()
                            ),
                        );
                    }
                    Some(rule)
                })
                .collect()
        }),
        tools: tools
            .as_ref()
            .and_then(|t| ck.globs(t, "agent.policy.tools")),
        credential_max_age: credential_max_age.as_ref().and_then(|v| {
            ck.value(v, "agent.policy.credential_max_age", |s| {
                humantime::parse_duration(s).and_then(|d| {
                    if d == Duration::ZERO {
                        Err(humantime::DurationError::Empty)
                    } else {
                        Ok(d)
                    }
                })
            })
        }),
        accepts_delegation_from: ck.spiffe_ids(
            accepts_delegation_from,
            "agent.policy.accepts_delegation_from",
        ),
    }
}

fn cgroup_glob(s: &str) -> Result<Glob, String> {
    if s.starts_with("/sys/fs/cgroup/") {
        return Err(
            "cgroup paths are relative to the hierarchy root: drop the /sys/fs/cgroup prefix"
                .into(),
        );
    }
    absolute_glob(s)
}

fn exe_glob(s: &str) -> Result<Glob, String> {
    absolute_glob(s)
}

fn absolute_glob(s: &str) -> Result<Glob, String> {
    if !(s.starts_with('/') || s.starts_with('*')) {
        return Err("must start with '/' (or a '*' pattern)".into());
    }
    Glob::new(s).map_err(|e| e.kind().to_string())
}

fn unit(s: &str) -> Result<String, &'static str> {
    if container::is_unit_name(s) {
        Ok(s.to_owned())
    } else {
        Err("must be a unit name ending in .service or .scope")
    }
}

fn hex64(s: &str, what: &str) -> Result<(), String> {
    if container::is_container_id(s) {
        Ok(())
    } else {
        Err(format!("{what} is 64 lowercase hex digits"))
    }
}

fn pod_uid(s: &str) -> Result<String, &'static str> {
    if container::is_uuid(s) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("a pod uid is a dashed UUID (8-4-4-4-12 hex digits)")
    }
}

fn non_empty(s: &str) -> Result<String, &'static str> {
    if s.is_empty() {
        Err("must not be empty")
    } else {
        Ok(s.to_owned())
    }
}

/// The dotted key path (array indices omitted) of the entry that most tightly
/// encloses `span`, for errors that serde reports with a span but no key path.
/// A "missing field `x`" error points at the enclosing table, so `x` is appended.
fn field_at(root: &toml::de::DeTable<'_>, span: &Range<usize>, message: &str) -> String {
    let mut best: Option<(usize, String)> = None;
    visit(root, "", span.start, &mut best);
    let mut path = best.map(|(_, p)| p).unwrap_or_default();
    if let Some(missing) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(missing);
    }
    if path.is_empty() {
        path.push_str("(file)");
    }
    path
}

fn visit(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    pos: usize,
    best: &mut Option<(usize, String)>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let (k, v) = (key.span(), value.span());
        let whole = k.start.min(v.start)..k.end.max(v.end);
        if whole.contains(&pos) || whole.start == pos {
            let len = whole.len();
            if best.as_ref().is_none_or(|(l, _)| len <= *l) {
                *best = Some((len, path.clone()));
            }
        }
        visit_value(value.get_ref(), &path, pos, best);
    }
}

fn visit_value(
    value: &toml::de::DeValue<'_>,
    path: &str,
    pos: usize,
    best: &mut Option<(usize, String)>,
) {
    match value {
        toml::de::DeValue::Table(t) => visit(t, path, pos, best),
        toml::de::DeValue::Array(items) => {
            for item in items {
                visit_value(item.get_ref(), path, pos, best);
            }
        }
        _ => {}
    }
}
