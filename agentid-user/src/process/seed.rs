//! Reading processes from `/proc`: at start, and for a process first seen mid-life.
use procfs::process::Process as ProcProcess;

use super::{HostIds, Process};
use crate::cgroup::Resolver;

/// Every process readable now. Kernel threads (no exe) are kept: they are processes too.
pub(crate) fn all(host: &HostIds, resolver: &mut Resolver) -> Vec<Process> {
    let Ok(iter) = procfs::process::all_processes() else {
        return Vec::new();
    };
    iter.flatten()
        .filter_map(|p| read(host, resolver, &p))
        .collect()
}

/// One process by pid, or `None` when it is gone.
pub(crate) fn one(host: &HostIds, resolver: &mut Resolver, pid: u32) -> Option<Process> {
    let p = ProcProcess::new(i32::try_from(pid).ok()?).ok()?;
    read(host, resolver, &p)
}

fn read(host: &HostIds, resolver: &mut Resolver, p: &ProcProcess) -> Option<Process> {
    let stat = p.stat().ok()?;
    let status = p.status().ok()?;
    let pid = u32::try_from(stat.pid).ok()?;
    let cgroup = p
        .cgroups()
        .ok()
        .and_then(|cgs| {
            cgs.0
                .into_iter()
                .find(|c| c.hierarchy == 0)
                .map(|c| c.pathname)
        })
        .unwrap_or_else(|| "/".to_owned());
    let cgroup_id =
        crate::cgroup::id_of(&resolver.root().join(cgroup.trim_start_matches('/'))).unwrap_or(0);
    Some(Process {
        pid,
        exec_id: host.exec_id(stat.starttime, pid),
        ppid: u32::try_from(stat.ppid).unwrap_or(0),
        parent_exec_id: None,
        start_ticks: stat.starttime,
        exe: p
            .exe()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default(),
        argv: p.cmdline().unwrap_or_default(),
        comm: stat.comm,
        uid: status.ruid,
        gid: status.rgid,
        loginuid: p.loginuid().ok().filter(|&l| l != u32::MAX),
        cgroup_id,
        cgroup,
        exited_ns: None,
        moved_from: None,
    })
}
