//! Writes an enforcement [`Plan`] into the kernel's enforcement maps, adding before
//! removing: while a plan replaces another, nothing the new one allows is ever denied,
//! and a policy is lifted at once by removing its entry from `ENF_POLICIES`.
use std::{collections::BTreeMap, hash::Hash, net::IpAddr};

use agentid_ebpf::enforce::{
    CGROUPS_MAP, EXE_PATHS_MAP, EXES_MAP, ExeKey, ExePath, HOSTS_MAP, NAMES_MAP, NETS_MAP, NameKey,
    NetKey, POLICIES_MAP, PortSet, RESOLVERS_MAP, TASKS_MAP,
};
use aya::{
    Pod,
    maps::{
        HashMap, Map, MapData, MapError,
        lpm_trie::{Key, LpmTrie},
    },
};

use super::SensorError;
use crate::enforce::{Plan, map_addr};

/// The maps the daemon writes.
pub(crate) const MAPS: [&str; 9] = [
    TASKS_MAP,
    CGROUPS_MAP,
    POLICIES_MAP,
    HOSTS_MAP,
    NETS_MAP,
    NAMES_MAP,
    EXES_MAP,
    RESOLVERS_MAP,
    EXE_PATHS_MAP,
];

pub(crate) struct EnforceMaps {
    tasks: HashMap<MapData, u32, u32>,
    cgroups: HashMap<MapData, u64, u32>,
    policies: HashMap<MapData, u32, u32>,
    hosts: HashMap<MapData, NetKey, PortSet>,
    nets: LpmTrie<MapData, NetKey, PortSet>,
    names: HashMap<MapData, NameKey, PortSet>,
    exes: HashMap<MapData, ExeKey, u8>,
    resolvers: HashMap<MapData, [u8; 16], u8>,
    exe_paths: HashMap<MapData, ExePath, u8>,
}

fn err(name: &'static str) -> impl Fn(MapError) -> SensorError {
    move |e| SensorError::Map {
        name,
        detail: e.to_string(),
    }
}

impl EnforceMaps {
    pub(crate) fn take(
        mut take: impl FnMut(&'static str) -> Result<Map, SensorError>,
    ) -> Result<Self, SensorError> {
        Ok(Self {
            tasks: HashMap::try_from(take(TASKS_MAP)?).map_err(err(TASKS_MAP))?,
            cgroups: HashMap::try_from(take(CGROUPS_MAP)?).map_err(err(CGROUPS_MAP))?,
            policies: HashMap::try_from(take(POLICIES_MAP)?).map_err(err(POLICIES_MAP))?,
            hosts: HashMap::try_from(take(HOSTS_MAP)?).map_err(err(HOSTS_MAP))?,
            nets: LpmTrie::try_from(take(NETS_MAP)?).map_err(err(NETS_MAP))?,
            names: HashMap::try_from(take(NAMES_MAP)?).map_err(err(NAMES_MAP))?,
            exes: HashMap::try_from(take(EXES_MAP)?).map_err(err(EXES_MAP))?,
            resolvers: HashMap::try_from(take(RESOLVERS_MAP)?).map_err(err(RESOLVERS_MAP))?,
            exe_paths: HashMap::try_from(take(EXE_PATHS_MAP)?).map_err(err(EXE_PATHS_MAP))?,
        })
    }

    /// Makes the maps hold `plan`, the enforced agents' cgroups (id → policy, from a walk
    /// that saw ids up to `newest`) and the host's resolvers.
    pub(crate) fn apply(
        &mut self,
        plan: &Plan,
        cgroups: &BTreeMap<u64, u32>,
        newest: u64,
        resolvers: &[IpAddr],
    ) -> Result<(), SensorError> {
        let Self {
            tasks,
            cgroups: cgroup_map,
            policies,
            hosts,
            nets,
            names,
            exes,
            resolvers: resolver_map,
            exe_paths,
        } = self;
        // What the policies allow first, then the policies, the cgroups last: a cgroup
        // becomes enforced only once its policy is whole.
        let want_resolvers: BTreeMap<[u8; 16], u8> =
            resolvers.iter().map(|ip| (map_addr(*ip), 1)).collect();
        sync_hash(resolver_map, &want_resolvers, RESOLVERS_MAP)?;
        let want_hosts: std::collections::HashMap<NetKey, PortSet> =
            plan.hosts.iter().copied().collect();
        sync_hash(hosts, &want_hosts, HOSTS_MAP)?;
        let want_nets: Vec<Key<NetKey>> = plan
            .nets
            .iter()
            .map(|(bits, k, _)| Key::new(*bits, *k))
            .collect();
        for ((_, _, ports), key) in plan.nets.iter().zip(&want_nets) {
            nets.insert(key, ports, 0).map_err(err(NETS_MAP))?;
        }
        let want_names: std::collections::HashMap<NameKey, PortSet> =
            plan.names.iter().copied().collect();
        sync_hash(names, &want_names, NAMES_MAP)?;
        let want_exes: std::collections::HashMap<ExeKey, u8> =
            plan.exe_keys().map(|k| (k, 1)).collect();
        sync_hash(exes, &want_exes, EXES_MAP)?;
        let want_paths: std::collections::HashMap<ExePath, u8> =
            plan.exe_path_keys().map(|k| (k, 1)).collect();
        sync_hash(exe_paths, &want_paths, EXE_PATHS_MAP)?;
        sync_hash(policies, &plan.policies, POLICIES_MAP)?;
        sync_cgroups(cgroup_map, cgroups, newest)?;
        // Stale network rules, and tasks of policies no longer enforced.
        let stale: Vec<Key<NetKey>> = nets
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !want_nets
                    .iter()
                    .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data())
            })
            .collect();
        for key in stale {
            nets.remove(&key).map_err(err(NETS_MAP))?;
        }
        let gone: Vec<u32> = tasks
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, policy)| !plan.policies.contains_key(policy))
            .map(|(tgid, _)| tgid)
            .collect();
        for tgid in gone {
            let _ = tasks.remove(&tgid);
        }
        Ok(())
    }

    /// Tags a process with an enforced policy (one seen in an agent's cgroup before its
    /// first socket call or exec, which tag it in the kernel).
    pub(crate) fn tag(&mut self, tgid: u32, policy: u32) -> Result<(), SensorError> {
        self.tasks.insert(tgid, policy, 0).map_err(err(TASKS_MAP))
    }
}

/// Makes the cgroup map hold `want`, except for cgroups newer than the walk (ids above
/// `newest`; cgroup ids only grow): those the kernel enforced at their creation, after
/// the walk, must not lose it before the next walk sees them.
fn sync_cgroups(
    map: &mut HashMap<MapData, u64, u32>,
    want: &BTreeMap<u64, u32>,
    newest: u64,
) -> Result<(), SensorError> {
    for (k, v) in want {
        if map.get(k, 0).ok().as_ref() != Some(v) {
            map.insert(k, v, 0).map_err(err(CGROUPS_MAP))?;
        }
    }
    let stale: Vec<u64> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| *k <= newest && !want.contains_key(k))
        .collect();
    for k in stale {
        map.remove(&k).map_err(err(CGROUPS_MAP))?;
    }
    Ok(())
}

/// Makes a hash map hold exactly `want`: inserts and updates first, then removals.
fn sync_hash<K, V, W>(
    map: &mut HashMap<MapData, K, V>,
    want: &W,
    name: &'static str,
) -> Result<(), SensorError>
where
    K: Pod + Eq + Hash + Ord,
    V: Pod + PartialEq,
    for<'a> &'a W: IntoIterator<Item = (&'a K, &'a V)>,
{
    let mut wanted: Vec<K> = Vec::new();
    for (k, v) in want {
        if map.get(k, 0).ok().as_ref() != Some(v) {
            map.insert(k, v, 0).map_err(err(name))?;
        }
        wanted.push(*k);
    }
    wanted.sort_unstable();
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| wanted.binary_search(k).is_err())
        .collect();
    for k in stale {
        map.remove(&k).map_err(err(name))?;
    }
    Ok(())
}
