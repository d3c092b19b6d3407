//! Selector sets and the workload facts they are matched against.
//!
//! SPIRE's subset rule: a set matches when *every* key in it matches, and an agent
//! matches when *any* of its sets does. A key that is absent from a set does not
//! constrain; a key whose fact is unknown for a workload (no exe path, no container)
//! does not match.
use super::{container::ContainerInfo, policy::GlobList};

/// What is known about a process when it is matched (typically at exec).
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    /// cgroup v2 path relative to the hierarchy root, starting with `/`.
    pub cgroup_path: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<&'a str>,
    pub exe: Option<&'a str>,
    /// Lowercase hex. Only worth computing when [`super::Registry::needs_exe_sha256`].
    pub exe_sha256: Option<&'a str>,
    pub container: &'a ContainerInfo,
}

/// One glob (see [`GlobList`] for the dialect), with the pattern it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Glob(GlobList);

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, globset::Error> {
        GlobList::new(&[pattern]).map(Self)
    }

    pub fn pattern(&self) -> &str {
        self.0.patterns().first().map_or("", String::as_str)
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.0.is_match(s)
    }
}

/// One selector set; every present key must match.
///
/// `k8s_namespace` only matches when the caller filled in
/// [`ContainerInfo::k8s_namespace`], which cgroup paths never provide.
/// `container_id` compares the full 64-hex id (short docker ids are not accepted: they
/// could match more than one container).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelectorSet {
    pub cgroup: Option<Glob>,
    pub systemd_unit: Option<String>,
    pub container_id: Option<String>,
    pub k8s_pod_uid: Option<String>,
    pub k8s_namespace: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub user: Option<String>,
    pub exe: Option<Glob>,
    /// Lowercase hex.
    pub exe_sha256: Option<String>,
}

impl SelectorSet {
    pub fn matches(&self, w: &Workload<'_>) -> bool {
        // Destructured so that a new selector kind cannot be forgotten here.
        let Self {
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
        } = self;
        let c = w.container;
        uid.is_none_or(|u| u == w.uid)
            && gid.is_none_or(|g| g == w.gid)
            && eq(user.as_deref(), w.user)
            && eq(systemd_unit.as_deref(), c.systemd_unit.as_deref())
            && eq(container_id.as_deref(), c.container_id.as_deref())
            && eq(k8s_pod_uid.as_deref(), c.pod_uid.as_deref())
            && eq(k8s_namespace.as_deref(), c.k8s_namespace.as_deref())
            && eq(exe_sha256.as_deref(), w.exe_sha256)
            && cgroup.as_ref().is_none_or(|g| g.is_match(w.cgroup_path))
            && exe
                .as_ref()
                .is_none_or(|g| w.exe.is_some_and(|e| g.is_match(e)))
    }

    /// No key at all: such a set would match every process, so loading rejects it.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A wanted value matches when absent, or when the fact is known and equal.
fn eq(want: Option<&str>, have: Option<&str>) -> bool {
    want.is_none_or(|w| have == Some(w))
}

#[cfg(test)]
mod tests {
    use super::{ContainerInfo, Glob, SelectorSet, Workload};

    fn workload<'a>(cgroup_path: &'a str, c: &'a ContainerInfo) -> Workload<'a> {
        Workload {
            cgroup_path,
            uid: 1001,
            gid: 1001,
            user: Some("bot"),
            exe: Some("/usr/bin/python3.12"),
            exe_sha256: None,
            container: c,
        }
    }

    #[test]
    fn every_key_of_a_set_must_match() {
        let c = ContainerInfo {
            systemd_unit: Some("research-bot.service".into()),
            ..ContainerInfo::default()
        };
        let set = SelectorSet {
            cgroup: Some(Glob::new("/agents/research-bot/**").unwrap()),
            uid: Some(1001),
            ..SelectorSet::default()
        };
        assert!(set.matches(&workload("/agents/research-bot/worker/1", &c)));
        let mut w = workload("/agents/research-bot/worker/1", &c);
        w.uid = 0;
        assert!(!set.matches(&w), "uid differs");
        assert!(
            !set.matches(&workload("/agents/other", &c)),
            "cgroup differs"
        );

        let unit = SelectorSet {
            systemd_unit: Some("research-bot.service".into()),
            gid: Some(1001),
            user: Some("bot".into()),
            exe: Some(Glob::new("/usr/bin/python3*").unwrap()),
            ..SelectorSet::default()
        };
        assert!(unit.matches(&workload("/system.slice/research-bot.service", &c)));
        let mut w = workload("/", &c);
        w.exe = None;
        assert!(
            !unit.matches(&w),
            "unknown exe never matches an exe selector"
        );
    }

    #[test]
    fn unknown_facts_do_not_match() {
        let c = ContainerInfo::default();
        for set in [
            SelectorSet {
                container_id: Some("ab".repeat(32)),
                ..SelectorSet::default()
            },
            SelectorSet {
                k8s_namespace: Some("default".into()),
                ..SelectorSet::default()
            },
            SelectorSet {
                exe_sha256: Some("00".repeat(32)),
                ..SelectorSet::default()
            },
        ] {
            assert!(!set.matches(&workload("/", &c)), "{set:?}");
        }
        let c = ContainerInfo {
            k8s_namespace: Some("default".into()),
            ..ContainerInfo::default()
        };
        let ns = SelectorSet {
            k8s_namespace: Some("default".into()),
            ..SelectorSet::default()
        };
        assert!(
            ns.matches(&workload("/", &c)),
            "namespace supplied by caller"
        );
    }

    #[test]
    fn cgroup_globs_star_vs_double_star() {
        let c = ContainerInfo::default();
        let one = SelectorSet {
            cgroup: Some(Glob::new("/agents/*").unwrap()),
            ..SelectorSet::default()
        };
        let deep = SelectorSet {
            cgroup: Some(Glob::new("/agents/**").unwrap()),
            ..SelectorSet::default()
        };
        assert!(one.matches(&workload("/agents/bot", &c)));
        assert!(!one.matches(&workload("/agents/bot/child", &c)));
        assert!(deep.matches(&workload("/agents/bot", &c)));
        assert!(
            deep.matches(&workload("/agents", &c)),
            "a trailing /** includes the cgroup itself"
        );
        assert!(!deep.matches(&workload("/agentsx", &c)));
        assert!(deep.matches(&workload("/agents/bot/child/grandchild", &c)));
        assert!(!deep.matches(&workload("/other/agents/bot", &c)));
        assert!(SelectorSet::default().is_empty());
        assert!(!one.is_empty());
    }
}
