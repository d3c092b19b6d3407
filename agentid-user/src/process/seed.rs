//! Reading processes from `/proc`: at start, and for a process first seen mid-life.
use procfs::process::Process as ProcProcess;
use zeroize::Zeroizing;

use super::{HostIds, Process};
use crate::{
    cgroup::Resolver,
    event::{Detail, Event, EventKind, ScanIncomplete, SecretEnv},
};

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

/// Reads at most `cap` bytes of a `/proc` file into a buffer zeroed on drop, allocated once
/// (no reallocation leaves a copy of an environment behind). Returns the bytes and whether
/// the file held more than `cap`.
fn read_capped(path: &std::path::Path, cap: usize) -> std::io::Result<(Zeroizing<Vec<u8>>, bool)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = Zeroizing::new(vec![0u8; cap + 1]);
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let over = n > cap;
    buf.truncate(n.min(cap));
    Ok((buf, over))
}

/// A process the daemon did not see start, as the exec it would have seen: its command
/// line and environment read from `/proc/PID/cmdline` and `/proc/PID/environ` (up to the
/// same cap as a live exec), so the credential scan covers agents that predate the
/// daemon. `None` for a kernel thread (nothing to scan) or a process already gone.
///
/// For the scanner only: it describes a process the table already holds, so it must not
/// be applied to the process table as a new exec.
pub(super) fn seeded_exec(p: &Process) -> Option<Event> {
    use agentid_ebpf::EXEC_AREA_CAP;

    if p.exe.is_empty() {
        return None;
    }
    let dir = std::path::PathBuf::from(format!("/proc/{}", p.pid));
    // The same process still? A pid reused since seeding would be another process's
    // secrets attributed to this one.
    let stat = ProcProcess::new(i32::try_from(p.pid).ok()?)
        .ok()?
        .stat()
        .ok()?;
    if stat.starttime != p.start_ticks {
        return None;
    }
    let mut incomplete = Vec::new();
    let mut read = |name: &str| {
        read_capped(&dir.join(name), EXEC_AREA_CAP).unwrap_or_else(|_| {
            incomplete.push(ScanIncomplete::PROC_UNREADABLE);
            (Zeroizing::new(Vec::new()), false)
        })
    };
    let (cmdline, argv_over) = read("cmdline");
    let (environ, env_over) = read("environ");
    if argv_over {
        incomplete.push(ScanIncomplete::ARGV_BEYOND_CAP);
    }
    if env_over {
        incomplete.push(ScanIncomplete::ENV_BEYOND_CAP);
    }
    let mut argv: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if cmdline.last() == Some(&0) {
        argv.pop();
    }
    let start_ns = super::exec_id::ticks_to_ns(p.start_ticks);
    Some(Event {
        kind: EventKind::Exec,
        time: std::time::SystemTime::now(),
        ktime_ns: boot_ns(),
        proc_start_ns: Some(start_ns),
        pid: p.pid,
        ppid: Some(p.ppid),
        tid: p.pid,
        uid: p.uid,
        gid: p.gid,
        cgroup_id: p.cgroup_id,
        cgroup: Some(p.cgroup.clone()),
        comm: p.comm.clone(),
        blocked: false,
        detail: Detail::Exec {
            filename: p.exe.clone(),
            argv,
            argv_truncated: argv_over,
            argv_missing: false,
            loginuid: p.loginuid,
            env: SecretEnv::from_zeroizing(environ),
            scan_incomplete: ScanIncomplete::from_reasons(incomplete),
        },
    })
}

/// `CLOCK_BOOTTIME` now, in ns: the kernel events' time base.
fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}
