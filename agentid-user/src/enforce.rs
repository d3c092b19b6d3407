//! Enforcement plan: the policies of agents registered with `enforce = true`, compiled
//! into the entries of the kernel's enforcement maps (`agentid_ebpf::enforce`). Pure: the
//! sensor writes a plan into the maps, the daemon decides when.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use agentid_ebpf::enforce::{
    EXE_PATH_LEN, ExeKey, ExePath, LABEL_SEED, MAX_PORTS, NET_KEY_FIXED_BITS, NameKey, NetKey,
    PortSet, label_step, name_kind, policy_flags, suffix_step, v4_mapped,
};
use ipnet::IpNet;
use sha2::{Digest as _, Sha256};

use crate::identity::{
    SpiffeId,
    policy::{Dest, GlobList, Policy, Wildcard},
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "{agent}: {name} allows more than {MAX_PORTS} different ports once the wildcards or networks over it are counted; enforcement supports at most {MAX_PORTS}"
    )]
    TooManyPorts { agent: String, name: String },
}

/// The entries of the enforcement maps for a set of enforced agents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Policy id → `policy_flags`.
    pub policies: BTreeMap<u32, u32>,
    /// Single addresses and the ports allowed to them (those of every rule covering
    /// the address merged in).
    pub hosts: Vec<(NetKey, PortSet)>,
    /// Networks: LPM prefix length, key and ports (merged likewise).
    pub nets: Vec<(u32, NetKey, PortSet)>,
    pub names: Vec<(NameKey, PortSet)>,
    pub exes: BTreeSet<(u32, u32, u64)>,
    /// Policy id and the literal paths of `tools` (no wildcard): the kernel allows an
    /// exec by such a name whatever file is there, so a replaced tool never waits for a
    /// rescan.
    pub exe_paths: BTreeSet<(u32, String)>,
    /// The agents' ids, by policy id (for `status` and the log).
    pub agents: BTreeMap<u32, String>,
}

/// The kernel's id for an agent's policy: stable across restarts and reloads, so a
/// resumed pin set and a reload find the same entries. Never 0.
pub fn policy_id(agent: &SpiffeId) -> u32 {
    let d = Sha256::digest(agent.to_string().as_bytes());
    u32::from_le_bytes([d[0], d[1], d[2], d[3]]).max(1)
}

/// The kernel's hash of a DNS name's suffix made of `labels` (see
/// `agentid_ebpf::enforce::suffix_step`).
pub fn suffix_hash(labels: &[&str]) -> u64 {
    labels.iter().rev().fold(0, |s, label| {
        suffix_step(s, label.bytes().fold(LABEL_SEED, label_step))
    })
}

/// A port rule: `None` is any port.
type Ports = BTreeSet<Option<u16>>;

/// Compiles the policies of enforced agents. Tools are resolved to executables by
/// [`exes_of`] (file system access), separately.
pub fn compile<'a>(
    agents: impl IntoIterator<Item = (&'a SpiffeId, &'a Policy)>,
) -> Result<Plan, PlanError> {
    let mut plan = Plan::default();
    for (id, policy) in agents {
        if !policy.enforce {
            continue;
        }
        let pid = policy_id(id);
        let mut flags = 0;
        if let Some(rules) = &policy.egress {
            flags |= policy_flags::EGRESS;
            let mut patterns: Vec<(Wildcard, &str, Option<u16>)> = Vec::new();
            let mut nets: Vec<(IpNet, Option<u16>)> = Vec::new();
            for rule in rules {
                match &rule.dest {
                    Dest::Net(net) => nets.push((net.trunc(), rule.port)),
                    Dest::Name(p) => patterns.push((p.wildcard, p.base.as_str(), rule.port)),
                }
            }
            flags |= compile_nets(&mut plan, id, pid, &nets)?;
            let mut by_key: BTreeMap<(u32, &str), Ports> = BTreeMap::new();
            for &(w, base, _) in &patterns {
                let kind = match w {
                    Wildcard::Exact => name_kind::EXACT,
                    Wildcard::OneLabel => name_kind::ONE_LABEL,
                    Wildcard::AnyDepth => name_kind::ANY_DEPTH,
                };
                // The kernel uses the most specific match only: merge in the ports of
                // every pattern that matches all the names this one does.
                let ports: Ports = patterns
                    .iter()
                    .filter(|&&(ow, obase, _)| covers(ow, obase, w, base))
                    .map(|&(_, _, port)| port)
                    .collect();
                by_key.entry((kind, base)).or_default().extend(ports);
            }
            for ((kind, base), ports) in by_key {
                let labels: Vec<&str> = base.split('.').collect();
                let value = port_set(&ports).ok_or_else(|| PlanError::TooManyPorts {
                    agent: id.to_string(),
                    name: base.to_owned(),
                })?;
                plan.names.push((
                    NameKey {
                        policy: pid,
                        kind,
                        hash: suffix_hash(&labels),
                    },
                    value,
                ));
            }
        }
        if let Some(tools) = &policy.tools {
            flags |= policy_flags::TOOLS;
            plan.exes
                .extend(exes_of(tools).into_iter().map(|(dev, ino)| (pid, dev, ino)));
            plan.exe_paths.extend(
                literal_paths(tools)
                    .into_iter()
                    .map(|p| (pid, p.to_owned())),
            );
        }
        plan.policies.insert(pid, flags);
        plan.agents.insert(pid, id.to_string());
    }
    Ok(plan)
}

/// Whether pattern `(ow, obase)` matches every name pattern `(w, base)` matches.
fn covers(ow: Wildcard, obase: &str, w: Wildcard, base: &str) -> bool {
    let below = |b: &str, o: &str| {
        b.len() > o.len() + 1 && b.ends_with(o) && b.as_bytes()[b.len() - o.len() - 1] == b'.'
    };
    match (ow, w) {
        (Wildcard::Exact, Wildcard::Exact) | (Wildcard::OneLabel, Wildcard::OneLabel) => {
            obase == base
        }
        (Wildcard::OneLabel, Wildcard::Exact) => {
            below(base, obase) && !base[..base.len() - obase.len() - 1].contains('.')
        }
        (Wildcard::AnyDepth, Wildcard::Exact) => below(base, obase),
        (Wildcard::AnyDepth, Wildcard::OneLabel | Wildcard::AnyDepth) => {
            obase == base || below(base, obase)
        }
        _ => false,
    }
}

fn port_set(ports: &Ports) -> Option<PortSet> {
    let mut v = PortSet::default();
    for p in ports {
        match p {
            None => v.any = 1,
            Some(p) => {
                let slot = v.ports.get_mut(v.count as usize)?;
                *slot = *p;
                v.count += 1;
            }
        }
    }
    Some(v)
}

/// The address rules of policy `pid`: single addresses into [`Plan::hosts`], networks
/// into [`Plan::nets`], each with the ports of every rule whose network contains it (the
/// kernel uses the most specific match only, as for names). Returns the policy flags
/// that say which of the two maps the policy has entries in.
fn compile_nets(
    plan: &mut Plan,
    id: &SpiffeId,
    pid: u32,
    nets: &[(IpNet, Option<u16>)],
) -> Result<u32, PlanError> {
    let mut by_net: BTreeMap<IpNet, Ports> = BTreeMap::new();
    for (net, _) in nets {
        let ports: Ports = nets
            .iter()
            .filter(|(outer, _)| outer.contains(net))
            .map(|&(_, port)| port)
            .collect();
        by_net.entry(*net).or_default().extend(ports);
    }
    let mut flags = 0;
    for (net, ports) in by_net {
        let value = port_set(&ports).ok_or_else(|| PlanError::TooManyPorts {
            agent: id.to_string(),
            name: net.to_string(),
        })?;
        let (addr, bits) = match net {
            IpNet::V4(n) => (v4_mapped(n.addr().octets()), 96 + u32::from(n.prefix_len())),
            IpNet::V6(n) => (n.addr().octets(), u32::from(n.prefix_len())),
        };
        let key = NetKey {
            policy: pid,
            pad: 0,
            addr,
        };
        if bits == 128 {
            flags |= policy_flags::HOSTS;
            plan.hosts.push((key, value));
        } else {
            flags |= policy_flags::NETS;
            plan.nets.push((NET_KEY_FIXED_BITS + bits, key, value));
        }
    }
    Ok(flags)
}

/// An address as the enforcement maps hold it.
pub fn map_addr(ip: IpAddr) -> [u8; 16] {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The patterns of `tools` that are plain absolute paths the kernel can compare an
/// exec's name with (shorter than its key holds).
pub fn literal_paths(tools: &GlobList) -> Vec<&str> {
    tools
        .patterns()
        .iter()
        .map(String::as_str)
        .filter(|p| {
            p.starts_with('/') && !p.contains(['*', '?', '[', '{', '\\']) && p.len() < EXE_PATH_LEN
        })
        .collect()
}

/// The executables (kernel `s_dev`, inode) that `tools` names today: each pattern's
/// literal directory is walked (up to 6 levels for `**`) and every matching path is
/// followed through symlinks to the file the kernel will run. And the directory of each
/// `DIR/*` pattern with a literal `DIR`: the kernel allows any file opened in it (after
/// symlinks), so a new or replaced tool there never waits for a rescan; a directory is
/// never run itself, so it shares the map.
pub fn exes_of(tools: &GlobList) -> BTreeSet<(u32, u64)> {
    let mut out = BTreeSet::new();
    for pattern in tools.patterns() {
        let literal_end = pattern.find(['*', '?', '[', '{']).unwrap_or(pattern.len());
        if let Some(dir) = pattern.strip_suffix("/*")
            && literal_end == dir.len() + 1
            && !dir.contains('\\')
        {
            add_inode(
                Path::new(if dir.is_empty() { "/" } else { dir }),
                true,
                &mut out,
            );
        }
        let dir = match pattern[..literal_end].rfind('/') {
            Some(0) => "/",
            Some(i) => &pattern[..i],
            None => continue,
        };
        let depth = if pattern.contains("**") {
            6
        } else {
            pattern[literal_end..].matches('/').count() + 1
        };
        if literal_end == pattern.len() {
            add_inode(Path::new(pattern), false, &mut out);
            continue;
        }
        walk(Path::new(dir), depth, tools, &mut out);
    }
    out
}

fn walk(dir: &Path, depth: usize, tools: &GlobList, out: &mut BTreeSet<(u32, u64)>) {
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Some(s) = path.to_str()
            && tools.is_match(s)
        {
            add_inode(&path, false, out);
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, depth - 1, tools, out);
        }
    }
}

/// A regular file's (or with `dir`, a directory's) device and inode, after symlinks.
fn add_inode(path: &Path, dir: bool, out: &mut BTreeSet<(u32, u64)>) {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && (if dir { meta.is_dir() } else { meta.is_file() })
    {
        let dev = meta.dev();
        // The kernel's `s_dev` form: major << 20 | minor.
        let s_dev = (libc::major(dev) << 20) | libc::minor(dev);
        out.insert((s_dev, meta.ino()));
    }
}

/// Extends `enforced` (cgroup id → policy id, the cgroups enforced agents' selectors
/// name) to every cgroup below one of them, with its nearest enforced ancestor's policy:
/// the kernel gives a new cgroup its parent's policy at creation, and the walk must not
/// take it back. A selector naming a cgroup for an enforced agent wins; one for a
/// monitored agent does not lift it (else an agent could shed enforcement by naming a
/// sub-cgroup after a monitored agent's pattern).
pub fn inherit_to_descendants(paths: &[(u64, String)], enforced: &mut BTreeMap<u64, u32>) {
    let by_path: BTreeMap<&str, u32> = paths
        .iter()
        .filter_map(|(id, p)| enforced.get(id).map(|policy| (p.as_str(), *policy)))
        .collect();
    if by_path.is_empty() {
        return;
    }
    for (id, path) in paths {
        if enforced.contains_key(id) {
            continue;
        }
        let mut at = path.as_str();
        while let Some(i) = at.rfind('/') {
            at = &at[..i];
            if let Some(policy) = by_path.get(if at.is_empty() { "/" } else { at }) {
                enforced.insert(*id, *policy);
                break;
            }
        }
    }
}

/// The host's resolvers: `nameserver` lines of `/etc/resolv.conf` and the
/// systemd-resolved stub.
pub fn host_resolvers() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    out.push(IpAddr::from([127, 0, 0, 53]));
    out.sort_unstable();
    out.dedup();
    out
}

impl Plan {
    /// Executables of `ExeKey` form.
    pub fn exe_keys(&self) -> impl Iterator<Item = ExeKey> + '_ {
        self.exes
            .iter()
            .map(|&(policy, dev, ino)| ExeKey { policy, dev, ino })
    }

    /// Literal tool paths of `ExePath` form.
    pub fn exe_path_keys(&self) -> impl Iterator<Item = ExePath> + '_ {
        self.exe_paths.iter().map(|(policy, path)| {
            let mut key = ExePath {
                policy: *policy,
                path: [0; EXE_PATH_LEN],
            };
            key.path[..path.len()].copy_from_slice(path.as_bytes());
            key
        })
    }
}

#[cfg(test)]
mod tests {
    use agentid_ebpf::enforce::policy_flags;

    use super::{GlobList, compile, covers, exes_of, policy_id, suffix_hash};
    use crate::identity::{
        SpiffeId,
        policy::{EgressRule, Policy, Wildcard},
    };

    #[test]
    fn enforce_is_read_from_the_registration() {
        let reg = crate::identity::Registry::parse_str(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nuid = 1\n[agent.policy]\nenforce = true\negress = []\n",
            "bot.toml",
        );
        assert!(reg.errors().is_empty(), "{:?}", reg.errors());
        let p = &reg.agents()[0].policy;
        assert!(p.enforce);
        let plan = compile(reg.agents().iter().map(|a| (&a.id, &a.policy))).unwrap();
        assert_eq!(plan.policies.values().copied().collect::<Vec<_>>(), [1]);
        assert!(plan.nets.is_empty() && plan.names.is_empty());
    }

    #[test]
    fn cgroups_below_an_enforced_one_inherit_the_nearest_policy() {
        let paths: Vec<(u64, String)> = [
            (1, "/"),
            (2, "/a"),
            (3, "/a/b"),
            (4, "/a/b/c"),
            (5, "/ab"),
            (6, "/a/b/x"),
            (7, "/a/b/x/y"),
        ]
        .iter()
        .map(|(id, p)| (*id, (*p).to_owned()))
        .collect();
        let mut enforced = std::collections::BTreeMap::from([(2, 10), (6, 20)]);
        super::inherit_to_descendants(&paths, &mut enforced);
        assert_eq!(
            enforced.into_iter().collect::<Vec<_>>(),
            [(2, 10), (3, 10), (4, 10), (6, 20), (7, 20)],
            "/ab is a sibling, not a child; the nearest enforced ancestor wins"
        );
    }

    #[test]
    fn literal_tools_are_kept_as_paths_for_the_kernel() {
        let reg = crate::identity::Registry::parse_str(
            "[[agent]]\nid = \"spiffe://example.org/x\"\n[[agent.selectors]]\nuid = 1\n[agent.policy]\nenforce = true\ntools = [\"/usr/bin/git\", \"/usr/bin/python3*\", \"/opt/**/tool\"]\n",
            "bot.toml",
        );
        assert!(reg.errors().is_empty(), "{:?}", reg.errors());
        let plan = compile(reg.agents().iter().map(|a| (&a.id, &a.policy))).unwrap();
        let paths: Vec<&str> = plan.exe_paths.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(paths, ["/usr/bin/git"]);
        let key = plan.exe_path_keys().next().unwrap();
        assert_eq!(&key.path[..13], b"/usr/bin/git\0");
    }

    #[test]
    fn suffix_hash_extends_from_the_last_label_and_ignores_case() {
        assert_eq!(
            suffix_hash(&["api", "example", "org"]),
            suffix_hash(&["API", "Example", "ORG"])
        );
        assert_ne!(
            suffix_hash(&["api", "example", "org"]),
            suffix_hash(&["example", "org"])
        );
        assert_ne!(suffix_hash(&["ab", "c"]), suffix_hash(&["a", "bc"]));
    }

    #[test]
    fn wildcards_cover_what_they_match() {
        assert!(covers(
            Wildcard::AnyDepth,
            "example.org",
            Wildcard::Exact,
            "a.b.example.org"
        ));
        assert!(covers(
            Wildcard::OneLabel,
            "example.org",
            Wildcard::Exact,
            "a.example.org"
        ));
        assert!(!covers(
            Wildcard::OneLabel,
            "example.org",
            Wildcard::Exact,
            "a.b.example.org"
        ));
        assert!(covers(
            Wildcard::AnyDepth,
            "org",
            Wildcard::OneLabel,
            "example.org"
        ));
        assert!(!covers(
            Wildcard::Exact,
            "example.org",
            Wildcard::OneLabel,
            "example.org"
        ));
    }

    #[test]
    fn compiles_only_enforced_policies_and_merges_ports() {
        let id = SpiffeId::parse("spiffe://example.org/agent/x").unwrap();
        let rules = ["api.example.org:443", "**.example.org:8443", "10.0.0.0/8:*"]
            .iter()
            .map(|r| EgressRule::parse(r).unwrap())
            .collect();
        let mut policy = Policy {
            egress: Some(rules),
            ..Policy::default()
        };
        assert!(compile([(&id, &policy)]).unwrap().policies.is_empty());
        policy.enforce = true;
        let plan = compile([(&id, &policy)]).unwrap();
        assert_eq!(
            plan.policies.get(&policy_id(&id)),
            Some(&(policy_flags::EGRESS | policy_flags::NETS))
        );
        assert_eq!(plan.nets.len(), 1);
        assert_eq!(plan.nets[0].0, 64 + 96 + 8);
        assert_eq!(plan.nets[0].2.any, 1);
        let exact = plan
            .names
            .iter()
            .find(|(k, _)| k.hash == suffix_hash(&["api", "example", "org"]))
            .unwrap();
        assert_eq!((exact.1.count, &exact.1.ports[..2]), (2, &[443, 8443][..]));
    }

    #[test]
    fn an_address_gets_the_ports_of_every_network_over_it() {
        let id = SpiffeId::parse("spiffe://example.org/agent/x").unwrap();
        let rules = [
            "10.0.0.0/8:80",
            "10.1.0.0/16:8080",
            "10.1.2.3:443",
            "10.1.2.3:22",
            "192.0.2.1:*",
        ]
        .iter()
        .map(|r| EgressRule::parse(r).unwrap())
        .collect();
        let policy = Policy {
            egress: Some(rules),
            enforce: true,
            ..Policy::default()
        };
        let plan = compile([(&id, &policy)]).unwrap();
        let flags = policy_flags::EGRESS | policy_flags::HOSTS | policy_flags::NETS;
        assert_eq!(plan.policies.get(&policy_id(&id)), Some(&flags));
        let ports =
            |v: &agentid_ebpf::enforce::PortSet| (v.any, v.ports[..v.count as usize].to_vec());
        let hosts: Vec<_> = plan
            .hosts
            .iter()
            .map(|(k, v)| (k.addr[12..].to_vec(), ports(v)))
            .collect();
        assert_eq!(
            hosts,
            [
                (vec![10, 1, 2, 3], (0, vec![22, 80, 443, 8080])),
                (vec![192, 0, 2, 1], (1, vec![])),
            ]
        );
        let nets: Vec<_> = plan
            .nets
            .iter()
            .map(|(bits, _, v)| (*bits, ports(v)))
            .collect();
        assert_eq!(
            nets,
            [
                (64 + 96 + 8, (0, vec![80])),
                (64 + 96 + 16, (0, vec![80, 8080]))
            ]
        );
    }

    #[test]
    fn a_dir_star_rule_allows_its_directory_and_nothing_deeper() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::env::temp_dir().join(format!("agentid-dirstar-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("tool"), b"").unwrap();
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        let star = GlobList::new(&[format!("{}/*", dir.display())]).unwrap();
        let got: Vec<u64> = exes_of(&star).into_iter().map(|(_, i)| i).collect();
        let mut want = vec![ino(&dir), ino(&dir.join("tool"))];
        want.sort_unstable();
        assert_eq!(got, want, "the directory and the file in it, not sub/");
        // Only a literal DIR: `DIR*/*` and `DIR/x*` are left to the scan.
        let glob = GlobList::new(&[
            format!("{}*/*", dir.display()),
            format!("{}/t*", dir.display()),
        ])
        .unwrap();
        assert!(exes_of(&glob).iter().all(|&(_, i)| i != ino(&dir)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
