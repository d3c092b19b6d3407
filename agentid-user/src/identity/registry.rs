//! The agent registry: registrations loaded from `agents.d/*.toml`, and matching a
//! workload against them.
//!
//! Loading is per file and all-or-nothing: a file with any error contributes no agent
//! (half an agent, or one agent of a file whose other half is broken, is more
//! surprising than none), and its errors are kept in [`Registry::errors`]. Other files
//! load regardless, so one bad file never un-registers the agents of the good ones.
//!
//! Ids are unique across files. Files load in sorted name order and the first file
//! to register an id keeps it; a later file registering it again is in error (and,
//! all-or-nothing, contributes nothing), with a message naming both places.
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Serialize;

use super::{
    format::parse_file,
    policy::{GlobList, Policy},
    selector::{SelectorSet, Workload},
    spiffe::SpiffeId,
};

/// Where registrations live unless configured otherwise.
pub const DEFAULT_AGENTS_DIR: &str = "/etc/agentid/agents.d";

/// Creates the agents directory when it does not exist yet, with its missing parents:
/// `0755` whatever the umask (registrations are configuration, not secrets, and
/// `agentid audit export` reads them unprivileged). A fresh machine then starts with an
/// empty registry instead of a registry error. This holds for a configured directory as
/// much as for the default one: a typo'd path shows up as an empty registry in
/// `agentid status`, which names the directory. An existing directory is left as it is.
///
/// Returns whether it created the directory. When creation fails (a read-only `/etc`),
/// the caller logs it, and loading the registry reports the missing directory as before.
pub fn create_agents_dir(dir: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if dir.exists() {
        return Ok(false);
    }
    // Outermost missing ancestor first, each chmod'ed explicitly: the daemon runs under
    // umask 077, which would otherwise leave them 0700.
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o755).create(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?,
            // Another process made it meanwhile: theirs, left as it is.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// One invalid thing in a registration file, located precisely enough to fix it
/// without searching: `agents.d/bot.toml:7: agent.id: "…": trust domain must be lowercase`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// Dotted key path without array indices, e.g. `agent.selectors.cgroup`.
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The directory itself could not be listed: nothing can be loaded, so a reload
    /// should keep the registry it has.
    #[error("agents directory {}: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Where an agent was registered: `file:line` of its `[[agent]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Credential files of an agent, and the agents allowed to use them too.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    pub files: GlobList,
    pub shared_with: Vec<SpiffeId>,
}

impl Credentials {
    pub fn owns_file(&self, path: &str) -> bool {
        self.files.is_match(path)
    }

    pub fn is_shared_with(&self, agent: &SpiffeId) -> bool {
        self.shared_with.contains(agent)
    }
}

/// A registered agent. Serialises to its summary (id, name, owner, environment): what
/// events and reports carry, not the matching machinery.
#[derive(Debug, Clone, Serialize)]
pub struct Agent {
    pub id: SpiffeId,
    pub name: Option<String>,
    /// The accountable human or team.
    pub owner: Option<String>,
    pub environment: Option<String>,
    /// Never empty, and no set in it is empty.
    #[serde(skip)]
    pub selectors: Vec<SelectorSet>,
    #[serde(skip)]
    pub policy: Policy,
    #[serde(skip)]
    pub credentials: Credentials,
    #[serde(skip)]
    pub origin: Origin,
}

/// The result of matching a workload.
#[derive(Debug, Clone)]
pub enum Match {
    Unregistered,
    Agent(Arc<Agent>),
    /// More than one agent matched, sorted by id. Never resolved by picking one: that
    /// would make attribution depend on file order.
    Ambiguous(Vec<Arc<Agent>>),
}

#[derive(Debug, Default)]
pub struct Registry {
    agents: Vec<Arc<Agent>>,
    // Keys come from the operator's registrations, not from workloads: a fast unkeyed hash
    // (looked up once per event by the detector).
    by_id: rustc_hash::FxHashMap<SpiffeId, usize>,
    errors: Vec<RegistryError>,
    /// Valid but probably unmeant (a wildcard over a zone anyone can create names in).
    warnings: Vec<ConfigError>,
    needs_exe_sha256: bool,
}

impl Registry {
    /// Loads every `*.toml` in `dir` (not recursive, dot files skipped, sorted by name).
    /// Never fails: a directory that cannot be listed gives an empty registry with that
    /// error in [`Self::errors`]. Use [`Self::reload`] to keep the old registry then.
    pub fn load_dir(dir: &Path) -> Self {
        Self::try_load_dir(dir).unwrap_or_else(|e| Self {
            errors: vec![e],
            ..Self::default()
        })
    }

    /// Loads `dir` afresh for an atomic swap: `Err` only when the directory itself
    /// cannot be listed, in which case the caller keeps `self`. Per-file problems are
    /// in the new registry's [`Self::errors`], as with [`Self::load_dir`].
    pub fn reload(&self, dir: &Path) -> Result<Self, RegistryError> {
        Self::try_load_dir(dir)
    }

    /// What a running daemon reloads to: `dir` afresh, except that a file that cannot be
    /// read or no longer parses keeps the agents it had in `self` (a half-saved edit or a
    /// corrupted file must not deregister a running agent), and a directory that cannot
    /// be listed keeps `self` whole. Either way the problem is in [`Self::errors`], so
    /// `agentid status` shows it. A file that is gone takes its agents with it: removing
    /// a registration is how an agent is deregistered.
    #[must_use]
    pub fn reload_keeping_last_good(&self, dir: &Path) -> Self {
        let mut new = match Self::try_load_dir(dir) {
            Ok(new) => new,
            Err(e) => {
                return Self {
                    agents: self.agents.clone(),
                    by_id: self.by_id.clone(),
                    errors: vec![e],
                    warnings: self.warnings.clone(),
                    needs_exe_sha256: self.needs_exe_sha256,
                };
            }
        };
        let failed: std::collections::HashSet<String> = new
            .errors
            .iter()
            .filter_map(|e| match e {
                RegistryError::Read { file, .. } => Some(file.display().to_string()),
                RegistryError::Invalid(c) => Some(c.file.clone()),
                RegistryError::Dir { .. } => None,
            })
            .collect();
        for agent in &self.agents {
            if failed.contains(&agent.origin.file) && !new.by_id.contains_key(&agent.id) {
                new.needs_exe_sha256 |= agent.selectors.iter().any(|s| s.exe_sha256.is_some());
                new.by_id.insert(agent.id.clone(), new.agents.len());
                new.agents.push(Arc::clone(agent));
            }
        }
        new
    }

    fn try_load_dir(dir: &Path) -> Result<Self, RegistryError> {
        let dir_err = |source| RegistryError::Dir {
            dir: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(dir_err)? {
            let path = entry.map_err(dir_err)?.path();
            let is_toml = path.extension().is_some_and(|e| e == "toml");
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if is_toml && !hidden && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut registry = Self::default();
        for path in paths {
            match std::fs::read_to_string(&path) {
                Ok(text) => registry.add_file(&text, &path.display().to_string()),
                Err(source) => registry
                    .errors
                    .push(RegistryError::Read { file: path, source }),
            }
        }
        Ok(registry)
    }

    /// Parses one file's text; `origin` names it in errors. For tests and for callers
    /// with registrations from elsewhere.
    pub fn parse_str(text: &str, origin: &str) -> Self {
        let mut registry = Self::default();
        registry.add_file(text, origin);
        registry
    }

    /// Adds one file's agents, all or nothing.
    fn add_file(&mut self, text: &str, origin: &str) {
        let agents = match parse_file(text, origin) {
            Ok((agents, warnings)) => {
                self.warnings.extend(warnings);
                agents
            }
            Err(errors) => {
                self.errors
                    .extend(errors.into_iter().map(RegistryError::Invalid));
                return;
            }
        };
        let mut dup = false;
        for agent in &agents {
            if let Some(&i) = self.by_id.get(&agent.id) {
                dup = true;
                self.errors.push(RegistryError::Invalid(ConfigError {
                    file: agent.origin.file.clone(),
                    line: agent.origin.line,
                    field: "agent.id".into(),
                    message: format!(
                        "{:?} is already registered at {}",
                        agent.id.as_str(),
                        self.agents[i].origin
                    ),
                }));
            }
        }
        if dup {
            return;
        }
        for agent in agents {
            self.needs_exe_sha256 |= agent.selectors.iter().any(|s| s.exe_sha256.is_some());
            self.by_id.insert(agent.id.clone(), self.agents.len());
            self.agents.push(Arc::new(agent));
        }
    }

    pub fn agents(&self) -> &[Arc<Agent>] {
        &self.agents
    }

    pub fn get(&self, id: &SpiffeId) -> Option<&Arc<Agent>> {
        self.by_id.get(id).map(|&i| &self.agents[i])
    }

    /// [`Self::get`] by the id's string, as events carry it.
    pub fn get_str(&self, id: &str) -> Option<&Arc<Agent>> {
        self.by_id.get(id).map(|&i| &self.agents[i])
    }

    /// Problems found while loading, in file order.
    /// Valid entries that are probably not what was meant, located like errors.
    pub fn warnings(&self) -> &[ConfigError] {
        &self.warnings
    }

    pub fn errors(&self) -> &[RegistryError] {
        &self.errors
    }

    /// Whether any selector uses `exe_sha256`: hashing every executed file is
    /// expensive, so callers only do it when something will look at the hash.
    pub fn needs_exe_sha256(&self) -> bool {
        self.needs_exe_sha256
    }

    /// The agent a workload belongs to. Runs per exec: a linear scan over
    /// precompiled selector sets, no allocation unless more than one agent matches.
    pub fn match_workload(&self, w: &Workload<'_>) -> Match {
        let mut matching = self
            .agents
            .iter()
            .filter(|a| a.selectors.iter().any(|s| s.matches(w)));
        let Some(first) = matching.next() else {
            return Match::Unregistered;
        };
        let Some(second) = matching.next() else {
            return Match::Agent(Arc::clone(first));
        };
        let mut all: Vec<Arc<Agent>> = [first, second]
            .into_iter()
            .chain(matching)
            .map(Arc::clone)
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Match::Ambiguous(all)
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, path::Path, time::Duration};

    use super::{ConfigError, Match, Registry, RegistryError};
    use crate::identity::{ContainerInfo, SpiffeId, Workload, parse_cgroup_path};

    const GOOD: &str = r#"
[[agent]]
id = "spiffe://example.org/agent/research-bot"
name = "research-bot"
owner = "ml-platform@example.org"
environment = "prod"
[[agent.selectors]]
cgroup = "/agents/research-bot/**"
uid = 1001
[[agent.selectors]]
systemd_unit = "research-bot.service"
[agent.policy]
egress = ["10.0.0.0/8:443", "127.0.0.1:8080", "[::1]:*"]
tools = ["/usr/bin/git", "/usr/bin/python3*"]
credential_max_age = "1h"
accepts_delegation_from = ["spiffe://example.org/agent/supervisor"]
[agent.credentials]
files = ["/etc/research-bot/token"]
shared_with = ["spiffe://example.org/agent/other"]
"#;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    /// The only error of a registry parsed from one bad text.
    fn only_error(text: &str) -> ConfigError {
        let reg = Registry::parse_str(text, "agents.d/bot.toml");
        assert!(reg.agents().is_empty(), "a bad file contributes no agents");
        match reg.errors() {
            [RegistryError::Invalid(e)] => e.clone(),
            other => panic!("expected one error, got {other:?}"),
        }
    }

    fn workload<'a>(cgroup_path: &'a str, uid: u32, c: &'a ContainerInfo) -> Workload<'a> {
        Workload {
            cgroup_path,
            uid,
            gid: uid,
            user: None,
            exe: Some("/usr/bin/python3"),
            exe_sha256: None,
            container: c,
        }
    }

    #[test]
    fn egress_names_load_and_open_zone_wildcards_warn() {
        let reg = Registry::parse_str(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nuid = 1\n[agent.policy]\negress = [\n  \"API.example.org.:443\",\n  \"*.s3.amazonaws.com:443\",\n  \"**.example.org:*\",\n]\n",
            "bot.toml",
        );
        assert!(reg.errors().is_empty(), "{:?}", reg.errors());
        let names = ["api.example.org".to_owned()];
        let p = &reg.agents()[0].policy;
        assert!(p.allows_egress("10.9.9.9".parse::<IpAddr>().unwrap(), 443, &names));
        assert!(!p.allows_egress("10.9.9.9".parse::<IpAddr>().unwrap(), 443, &[]));
        let warnings: Vec<String> = reg.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                "bot.toml:8: agent.policy.egress: \"*.s3.amazonaws.com:443\": a wildcard over amazonaws.com, where anyone can create names, allows strangers' hosts too"
            ]
        );

        let e = only_error(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nuid = 1\n[agent.policy]\negress = [\n  \"a.*.example.org:443\",\n]\n",
        );
        assert_eq!((e.line, e.field.as_str()), (7, "agent.policy.egress"));
    }

    #[test]
    fn loads_the_documented_example() {
        let reg = Registry::parse_str(GOOD, "bot.toml");
        assert!(reg.errors().is_empty(), "{:?}", reg.errors());
        let [agent] = reg.agents() else {
            panic!("one agent expected")
        };
        assert_eq!(agent.id.as_str(), "spiffe://example.org/agent/research-bot");
        assert_eq!(agent.name.as_deref(), Some("research-bot"));
        assert_eq!(agent.owner.as_deref(), Some("ml-platform@example.org"));
        assert_eq!(agent.environment.as_deref(), Some("prod"));
        assert_eq!(agent.selectors.len(), 2);
        assert_eq!(agent.selectors[0].uid, Some(1001));
        assert_eq!(
            agent.selectors[1].systemd_unit.as_deref(),
            Some("research-bot.service")
        );
        assert_eq!(agent.origin.to_string(), "bot.toml:2");
        let p = &agent.policy;
        assert_eq!(p.egress.as_ref().map(Vec::len), Some(3));
        assert!(p.allows_egress("10.1.2.3".parse::<IpAddr>().unwrap(), 443, &[]));
        assert!(!p.allows_egress("10.1.2.3".parse::<IpAddr>().unwrap(), 80, &[]));
        assert!(p.allows_tool("/usr/bin/python3.11"));
        assert!(!p.allows_tool("/bin/sh"));
        assert_eq!(p.credential_max_age, Some(Duration::from_hours(1)));
        assert!(p.accepts_delegation(&id("spiffe://example.org/agent/supervisor")));
        assert!(!p.accepts_delegation(&id("spiffe://example.org/agent/other")));
        assert!(agent.credentials.owns_file("/etc/research-bot/token"));
        assert!(!agent.credentials.owns_file("/etc/other/token"));
        assert!(
            agent
                .credentials
                .is_shared_with(&id("spiffe://example.org/agent/other"))
        );
        assert!(!reg.needs_exe_sha256());
        assert_eq!(
            serde_json::to_value(&**agent).unwrap(),
            serde_json::json!({
                "id": "spiffe://example.org/agent/research-bot",
                "name": "research-bot",
                "owner": "ml-platform@example.org",
                "environment": "prod",
            })
        );
        assert!(reg.get(&agent.id).is_some());
    }

    #[test]
    fn matches_with_the_subset_rule() {
        let reg = Registry::parse_str(GOOD, "bot.toml");
        let none = ContainerInfo::default();
        // first set: both cgroup and uid
        let m = reg.match_workload(&workload("/agents/research-bot/w1", 1001, &none));
        assert!(matches!(m, Match::Agent(a) if a.name.as_deref() == Some("research-bot")));
        assert!(matches!(
            reg.match_workload(&workload("/agents/research-bot/w1", 0, &none)),
            Match::Unregistered
        ));
        // second set: the unit alone, any uid
        let path = "/system.slice/research-bot.service";
        let unit = parse_cgroup_path(path);
        assert!(matches!(
            reg.match_workload(&workload(path, 0, &unit)),
            Match::Agent(_)
        ));
        assert!(matches!(
            reg.match_workload(&workload("/system.slice/other.service", 1001, &none)),
            Match::Unregistered
        ));
        // both sets of one agent match: still that one agent, not ambiguous
        assert!(matches!(
            reg.match_workload(&workload("/agents/research-bot/w1", 1001, &unit)),
            Match::Agent(_)
        ));
    }

    #[test]
    fn two_matching_agents_are_ambiguous() {
        let text = r#"
[[agent]]
id = "spiffe://example.org/b"
[[agent.selectors]]
uid = 1001
[[agent]]
id = "spiffe://example.org/a"
[[agent.selectors]]
cgroup = "/agents/*"
"#;
        let reg = Registry::parse_str(text, "x.toml");
        assert!(reg.errors().is_empty(), "{:?}", reg.errors());
        let none = ContainerInfo::default();
        let Match::Ambiguous(agents) = reg.match_workload(&workload("/agents/x", 1001, &none))
        else {
            panic!("expected ambiguous")
        };
        let ids: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["spiffe://example.org/a", "spiffe://example.org/b"]);
        // `*` does not cross '/', so only b matches here
        let Match::Agent(a) = reg.match_workload(&workload("/agents/x/y", 1001, &none)) else {
            panic!("expected one agent")
        };
        assert_eq!(a.id.as_str(), "spiffe://example.org/b");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = only_error(
            "# bot\n\n[[agent]]\nname = \"bot\"\n\n\nid = \"spiffe://Example.org/x\"\n[[agent.selectors]]\nuid = 1\n",
        );
        assert_eq!(
            e.to_string(),
            "agents.d/bot.toml:7: agent.id: \"spiffe://Example.org/x\": trust domain must be lowercase"
        );

        let e = only_error(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nuid = 1\nhostname = \"h\"\n",
        );
        assert_eq!((e.line, e.field.as_str()), (5, "agent.selectors.hostname"));
        assert!(e.message.starts_with("unknown field `hostname`"), "{e}");

        let e = only_error("[[agent]]\nname = \"bot\"\n[[agent.selectors]]\nuid = 1\n");
        assert_eq!((e.line, e.field.as_str()), (1, "agent.id"));
        assert_eq!(e.message, "missing field `id`");

        let e = only_error("[[agent]]\nid = \"spiffe://example.org/x\"\nowner = \"t\"\n");
        assert_eq!((e.line, e.field.as_str()), (1, "agent.selectors"));

        let e = only_error(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nuid = 1\n[[agent.selectors]]\n[agent.policy]\ntools = []\n",
        );
        assert_eq!((e.line, e.field.as_str()), (5, "agent.selectors"));
        assert_eq!(e.message, "an empty selector set would match every process");

        let e = only_error(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nuid = \"root\"\n",
        );
        assert_eq!((e.line, e.field.as_str()), (4, "agent.selectors.uid"));

        let e = only_error(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nuid = 1\n[agent.policy]\negress = [\n  \"10.0.0.0/8:443\",\n  \"::1:443\",\n]\n",
        );
        assert_eq!(
            e.to_string(),
            "agents.d/bot.toml:8: agent.policy.egress: \"::1:443\": an IPv6 address needs brackets: [::1]:PORT"
        );

        let e = only_error(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\ncgroup = \"/sys/fs/cgroup/agents/x\"\n",
        );
        assert_eq!((e.line, e.field.as_str()), (4, "agent.selectors.cgroup"));

        let e = only_error(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nuid = 1\n[agent.policy]\ncredential_max_age = \"soon\"\n",
        );
        assert_eq!(
            (e.line, e.field.as_str()),
            (6, "agent.policy.credential_max_age")
        );

        let e =
            only_error("[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]\nuid = 1\n");
        assert_eq!((e.line, e.field.as_str()), (3, "(toml syntax)"));

        let e = only_error(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nuid = 1\n[agent.policy]\ntools = [\"/usr/bin/git\", \"/usr/bin/[a\"]\n",
        );
        assert_eq!(
            e.to_string(),
            "agents.d/bot.toml:6: agent.policy.tools: \"/usr/bin/[a\": unclosed character class; missing ']'"
        );

        let e = only_error("[[agents]]\nid = 1\n");
        assert_eq!((e.line, e.field.as_str()), (1, "agents"));

        let e = only_error(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nuid = 1\n[agent.policy]\negress = \"10.0.0.0/8:443\"\n",
        );
        assert_eq!((e.line, e.field.as_str()), (6, "agent.policy.egress"));

        let e = only_error(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nsystemd_unit = \"research-bot\"\n",
        );
        assert_eq!(
            (e.line, e.field.as_str()),
            (4, "agent.selectors.systemd_unit")
        );
    }

    #[test]
    fn every_validation_error_of_a_file_is_reported() {
        let reg = Registry::parse_str(
            "[[agent]]\nid = \"spiffe://example.org/ok\"\n[[agent.selectors]]\nuid = 1\n\
             [[agent]]\nid = \"spiffe://example.org/a/\"\n[[agent.selectors]]\nexe_sha256 = \"xyz\"\n",
            "f.toml",
        );
        let lines: Vec<String> = reg.errors().iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "f.toml:6: agent.id: \"spiffe://example.org/a/\": path must not end with '/'",
                "f.toml:8: agent.selectors.exe_sha256: \"xyz\": a sha256 is 64 lowercase hex digits",
            ]
        );
        assert!(reg.agents().is_empty(), "all or nothing per file");
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("agentid-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_missing_agents_dir_is_created_0755_with_its_parents_and_loads_empty() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = temp_dir("create-agents");
        let dir = root.join("etc/agentid/agents.d");
        assert!(super::create_agents_dir(&dir).unwrap());
        for d in [root.join("etc"), root.join("etc/agentid"), dir.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{}", d.display());
        }
        let r = Registry::load_dir(&dir);
        assert!(
            r.agents().is_empty() && r.errors().is_empty(),
            "{:?}",
            r.errors()
        );
        // An existing directory is the user's: not created again, not chmod'ed.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!super::create_agents_dir(&dir).unwrap());
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        // Under a regular file it cannot be created: the error is returned, not hidden.
        write(&root, "file", "");
        assert!(super::create_agents_dir(&root.join("file/agents.d")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_bad_file_does_not_affect_a_good_one() {
        let dir = temp_dir("bad-file");
        write(&dir, "10-good.toml", GOOD);
        write(
            &dir,
            "20-bad.toml",
            "[[agent]]\nid = \"nope\"\n[[agent.selectors]]\nuid = 5\n",
        );
        write(
            &dir,
            "30-also-good.toml",
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nexe_sha256 = \"ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB\"\n",
        );
        write(&dir, "notes.txt", "not toml");
        write(&dir, ".hidden.toml", "garbage");
        let reg = Registry::load_dir(&dir);
        let ids: Vec<&str> = reg.agents().iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "spiffe://example.org/agent/research-bot",
                "spiffe://example.org/x"
            ]
        );
        assert!(reg.needs_exe_sha256());
        assert_eq!(
            reg.agents()[1].selectors[0].exe_sha256.as_deref(),
            Some("abababababababababababababababababababababababababababababababab")
        );
        let errors: Vec<String> = reg.errors().iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [format!(
                "{}:2: agent.id: \"nope\": must start with \"spiffe://\"",
                dir.join("20-bad.toml").display()
            )]
        );

        // reload: per-file problems are in the new registry; a missing dir is Err
        let again = reg.reload(&dir).unwrap();
        assert_eq!(again.agents().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(reg.reload(&dir), Err(RegistryError::Dir { .. })));
        // The daemon's reload keeps the last good registry, with the error to show.
        let kept = reg.reload_keeping_last_good(&dir);
        assert_eq!(kept.agents().len(), 2);
        assert!(matches!(kept.errors(), [RegistryError::Dir { .. }]));
        let empty = Registry::load_dir(&dir);
        assert!(empty.agents().is_empty());
        assert!(matches!(empty.errors(), [RegistryError::Dir { .. }]));
    }

    #[test]
    fn duplicate_ids_across_files_name_both_places() {
        let dir = temp_dir("dup");
        write(&dir, "a.toml", GOOD);
        write(
            &dir,
            "b.toml",
            "[[agent]]\nid = \"spiffe://example.org/y\"\n[[agent.selectors]]\nuid = 7\n\n\
             [[agent]]\nid = \"spiffe://example.org/agent/research-bot\"\n[[agent.selectors]]\nuid = 2\n",
        );
        let reg = Registry::load_dir(&dir);
        let a = dir.join("a.toml");
        let b = dir.join("b.toml");
        let errors: Vec<String> = reg.errors().iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [format!(
                "{}:6: agent.id: \"spiffe://example.org/agent/research-bot\" is already registered at {}:2",
                b.display(),
                a.display()
            )]
        );
        // the first file keeps the id; the second contributes nothing, not even `y`
        let ids: Vec<&str> = reg.agents().iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["spiffe://example.org/agent/research-bot"]);
        std::fs::remove_dir_all(&dir).unwrap();

        // within one file too
        let reg = Registry::parse_str(
            "[[agent]]\nid = \"spiffe://example.org/y\"\n[[agent.selectors]]\nuid = 7\n\
             [[agent]]\nid = \"spiffe://example.org/y\"\n[[agent.selectors]]\nuid = 8\n",
            "one.toml",
        );
        let errors: Vec<String> = reg.errors().iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "one.toml:6: agent.id: \"spiffe://example.org/y\" is already registered at one.toml:1"
            ]
        );
        assert!(reg.agents().is_empty());
    }

    #[test]
    fn a_corrupted_file_keeps_its_last_good_agents() {
        let dir = temp_dir("lastgood");
        write(&dir, "a.toml", GOOD);
        let reg = Registry::load_dir(&dir);
        let n = reg.agents().len();
        assert!(n > 0);
        write(
            &dir,
            "a.toml",
            "[[agent]]\nid = \"spiffe://example.org/half-sav",
        );
        let kept = reg.reload_keeping_last_good(&dir);
        assert_eq!(kept.agents().len(), n);
        assert_eq!(kept.errors().len(), 1);
        assert!(kept.get(&reg.agents()[0].id).is_some());
        // Fixed again: the file's agents as written, no error.
        write(&dir, "a.toml", GOOD);
        let fixed = kept.reload_keeping_last_good(&dir);
        assert_eq!(fixed.agents().len(), n);
        assert!(fixed.errors().is_empty());
        // Removed: deregistered.
        std::fs::remove_file(dir.join("a.toml")).unwrap();
        assert!(fixed.reload_keeping_last_good(&dir).agents().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

        /// Any registration text: agents or errors, all or nothing, every agent with
        /// selectors and findable by id.
        #[test]
        fn any_registration_is_all_or_nothing(
            id in "(spiffe://example.org/)?[a-z/%.-]{0,20}",
            cgroup in "[ -~\n]{0,20}", uid in proptest::prelude::any::<i64>(),
        ) {
            let text = format!(
                "[[agent]]\nid = {id:?}\nname = \"x\"\n[[agent.selectors]]\ncgroup = {cgroup:?}\nuid = {uid}\n"
            );
            let r = Registry::parse_str(&text, "p.toml");
            proptest::prop_assert!(r.agents().is_empty() != r.errors().is_empty());
            for a in r.agents() {
                proptest::prop_assert!(!a.selectors.is_empty());
                proptest::prop_assert!(r.get(&a.id).is_some());
            }
        }
    }
}
