//! The process table: every live process with its identity across pid reuse, lineage,
//! executable, arguments, credentials and cgroup.
//!
//! Seeded from `/proc` at start so processes that predate agentid are known, then kept
//! exact from fork/exec/exit events. A process the table has never heard of (an event lost
//! before it, or a race at start) is read from `/proc` on first sight.
mod exec_id;
mod seed;

use std::collections::{HashMap, VecDeque};

// Pids are assigned by the kernel, not chosen by workloads: a fast non-keyed hash is safe
// here and was a tenth of the pipeline's time with SipHash.
use rustc_hash::FxHashMap;

use serde::Serialize;

pub use exec_id::{ExecId, HostIds, ns_to_ticks, ticks_to_ns};

use crate::{
    cgroup::Resolver,
    event::{Detail, Event, EventKind},
};

/// What the table knows about one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Process {
    pub pid: u32,
    pub exec_id: ExecId,
    pub ppid: u32,
    pub parent_exec_id: Option<ExecId>,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
    /// Executable path as exec'd (`/proc/PID/exe` for seeded processes).
    pub exe: String,
    pub argv: Vec<String>,
    pub comm: String,
    /// Real uid/gid.
    pub uid: u32,
    pub gid: u32,
    /// Audit login uid: the human login session behind the process, when set.
    pub loginuid: Option<u32>,
    pub cgroup_id: u64,
    /// cgroup v2 path under the hierarchy root (`/` when unknown).
    pub cgroup: String,
    /// Boot-clock ns of the exit, once exited.
    #[serde(skip)]
    pub exited_ns: Option<u64>,
    /// The cgroup it was in before its last move (what it left, for identity-escape).
    #[serde(skip)]
    pub moved_from: Option<String>,
}

impl Process {
    /// Heap bytes its strings hold (not the struct itself).
    pub fn heap_bytes(&self) -> usize {
        let Self {
            pid: _,
            exec_id,
            ppid: _,
            parent_exec_id,
            start_ticks: _,
            exe,
            argv,
            comm,
            uid: _,
            gid: _,
            loginuid: _,
            cgroup_id: _,
            cgroup,
            exited_ns: _,
            moved_from,
        } = self;
        exec_id.heap_bytes()
            + parent_exec_id.as_ref().map_or(0, ExecId::heap_bytes)
            + exe.capacity()
            + argv.capacity() * size_of::<String>()
            + argv.iter().map(String::capacity).sum::<usize>()
            + comm.capacity()
            + cgroup.capacity()
            + moved_from.as_ref().map_or(0, String::capacity)
    }
}

/// A hash map's heap: its slots (hashbrown: one entry and one control byte each, plus a
/// group of control bytes) and what its values hold.
fn map_bytes(map: &FxHashMap<u32, Process>) -> usize {
    map.capacity() * (size_of::<(u32, Process)>() + 1)
        + map.values().map(Process::heap_bytes).sum::<usize>()
}

/// How an event changed the process it is about: tells the identity stage when to decide
/// the process's identity again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// First sight: forked, or found by a late `/proc` read.
    New,
    /// New image (exe, argv, maybe uid) in the same process.
    Exec,
    /// The process is now in another cgroup than before.
    Moved,
    /// The process exited (it stays readable for a grace period).
    Exited,
    Unchanged,
}

/// How long exited processes stay in the table (boot-clock ns), so events processed a
/// little later (other CPUs' records) still resolve, and how many at most.
const EXITED_GRACE_NS: u64 = 10_000_000_000;
const EXITED_MAX: usize = 16_384;

#[derive(Debug)]
pub struct ProcessTable {
    host: HostIds,
    resolver: Resolver,
    live: FxHashMap<u32, Process>,
    /// Exited processes by pid, with their exit order for eviction.
    exited: FxHashMap<u32, Process>,
    exit_order: VecDeque<(u64, u32, u64)>,
}

impl ProcessTable {
    pub fn new(host: HostIds, resolver: Resolver) -> Self {
        Self {
            host,
            resolver,
            live: FxHashMap::default(),
            exited: FxHashMap::default(),
            exit_order: VecDeque::new(),
        }
    }

    /// Loads every process from `/proc`. Returns how many were read.
    pub fn seed_from_proc(&mut self) -> usize {
        let seeded = seed::all(&self.host, &mut self.resolver);
        let n = seeded.len();
        for p in seeded {
            self.live.insert(p.pid, p);
        }
        // Parents' exec ids, now that every process is known.
        let parents: HashMap<u32, ExecId> = self
            .live
            .iter()
            .map(|(pid, p)| (*pid, p.exec_id.clone()))
            .collect();
        for p in self.live.values_mut() {
            p.parent_exec_id = parents.get(&p.ppid).cloned();
        }
        n
    }

    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.live.get(&pid).or_else(|| self.exited.get(&pid))
    }

    pub fn live(&self) -> impl Iterator<Item = &Process> {
        self.live.values()
    }

    /// Every live process that predates the daemon's probes, by pid, for
    /// [`Self::seeded_exec`]. This process itself is left out (the kernel drops its own
    /// activity too).
    pub fn seeded_pids(&self) -> Vec<u32> {
        let me = std::process::id();
        self.live.keys().copied().filter(|&pid| pid != me).collect()
    }

    /// A live process as the exec the probes would have reported (command line and
    /// environment from `/proc`, see `seed::seeded_exec`), for the credential scan; `None`
    /// when unknown, a kernel thread, or gone. Not for [`Self::apply`]: the table already
    /// holds the process. The event's environment is a secret: scan it and drop it.
    pub fn seeded_exec(&self, pid: u32) -> Option<Event> {
        self.live.get(&pid).and_then(seed::seeded_exec)
    }

    /// Rewrites every live process's arguments (secret redaction after `/proc` seeding).
    pub fn redact_argv(&mut self, mut f: impl FnMut(&mut [String])) {
        for p in self.live.values_mut() {
            f(&mut p.argv);
        }
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    pub fn exited_count(&self) -> usize {
        self.exited.len()
    }

    /// Heap bytes the table holds, live and exited entries (an estimate from allocated
    /// capacities: the maps' slots and each process's strings), for `status`.
    pub fn heap_bytes(&self) -> usize {
        let Self {
            host: _,
            resolver: _,
            live,
            exited,
            exit_order,
        } = self;
        map_bytes(live) + map_bytes(exited) + exit_order.capacity() * size_of::<(u64, u32, u64)>()
    }

    pub fn resolver(&mut self) -> &mut Resolver {
        &mut self.resolver
    }

    /// Applies one event; returns the process it is about and how it changed, or `None`
    /// when the process cannot be known (gone before anyone could read `/proc`).
    pub fn apply(&mut self, event: &Event) -> Option<(&Process, Change)> {
        self.evict(event.ktime_ns);
        let change = match (&event.kind, &event.detail) {
            (EventKind::Fork, _) => {
                let path = self.cgroup_path(event.cgroup_id);
                self.fork(event, path);
                Change::New
            }
            (
                EventKind::Exec,
                Detail::Exec {
                    filename,
                    argv,
                    loginuid,
                    ..
                },
            ) => {
                let path = self.cgroup_path(event.cgroup_id);
                self.exec(event, filename, argv, *loginuid, path)
            }
            (EventKind::Exit, _) => {
                return self.exit(event).map(|p| (p, Change::Exited));
            }
            _ => self.touch(event)?,
        };
        self.live.get(&event.pid).map(|p| (p, change))
    }

    /// Resolved per use, not per event: most events (connects, sends) are about a process
    /// whose cgroup the table already knows.
    fn cgroup_path(&mut self, cgroup_id: u64) -> String {
        self.resolver.path(cgroup_id).unwrap_or("/").to_owned()
    }

    fn fork(&mut self, event: &Event, cgroup: String) {
        let ppid = event.ppid.unwrap_or(0);
        let start_ticks = event.proc_start_ns.map_or(0, ns_to_ticks);
        let parent = self.known_or_read(ppid).cloned();
        let child = Process {
            pid: event.pid,
            exec_id: self.new_exec_id(event, start_ticks),
            ppid,
            parent_exec_id: parent.as_ref().map(|p| p.exec_id.clone()),
            start_ticks,
            exe: parent.as_ref().map(|p| p.exe.clone()).unwrap_or_default(),
            argv: parent.as_ref().map(|p| p.argv.clone()).unwrap_or_default(),
            comm: event.comm.clone(),
            uid: event.uid,
            gid: event.gid,
            loginuid: parent.as_ref().and_then(|p| p.loginuid),
            cgroup_id: event.cgroup_id,
            cgroup,
            exited_ns: None,
            moved_from: None,
        };
        // A live entry under this pid is a process whose exit we missed: replaced.
        self.live.insert(event.pid, child);
    }

    fn exec(
        &mut self,
        event: &Event,
        filename: &str,
        argv: &[String],
        loginuid: Option<u32>,
        cgroup: String,
    ) -> Change {
        let start_ticks = event.proc_start_ns.map_or(0, ns_to_ticks);
        let same = self
            .live
            .get(&event.pid)
            .is_some_and(|p| p.start_ticks == start_ticks);
        if !same {
            // Fork never seen (lost, or before start): build the entry from the exec.
            let ppid = event.ppid.unwrap_or(0);
            let parent_exec_id = self.known_or_read(ppid).map(|p| p.exec_id.clone());
            let p = Process {
                pid: event.pid,
                exec_id: self.new_exec_id(event, start_ticks),
                ppid,
                parent_exec_id,
                start_ticks,
                exe: String::new(),
                argv: Vec::new(),
                comm: String::new(),
                uid: event.uid,
                gid: event.gid,
                loginuid,
                cgroup_id: event.cgroup_id,
                cgroup: cgroup.clone(),
                exited_ns: None,
                moved_from: None,
            };
            self.live.insert(event.pid, p);
        }
        let Some(p) = self.live.get_mut(&event.pid) else {
            return Change::Unchanged;
        };
        filename.clone_into(&mut p.exe);
        p.argv = argv.to_vec();
        p.comm.clone_from(&event.comm);
        p.uid = event.uid;
        p.gid = event.gid;
        p.loginuid = loginuid;
        p.cgroup_id = event.cgroup_id;
        p.cgroup = cgroup;
        if let Some(ppid) = event.ppid
            && ppid != p.ppid
        {
            // Reparented (parent exited): keep the original parent's exec id.
            p.ppid = ppid;
        }
        if same { Change::Exec } else { Change::New }
    }

    /// The exec id of a process first seen in `event`, unique even when the pid was reused
    /// within one clock tick (see [`ExecId`]).
    fn new_exec_id(&self, event: &Event, start_ticks: u64) -> ExecId {
        let id = self.host.exec_id(start_ticks, event.pid);
        let taken = self
            .exited
            .get(&event.pid)
            .is_some_and(|p| p.start_ticks == start_ticks);
        match event.proc_start_ns {
            Some(ns) if taken => self.host.reused_exec_id(ns, event.pid),
            _ => id,
        }
    }

    fn exit(&mut self, event: &Event) -> Option<&Process> {
        let mut p = self.live.remove(&event.pid)?;
        p.exited_ns = Some(event.ktime_ns);
        self.exit_order
            .push_back((event.ktime_ns, p.pid, p.start_ticks));
        self.exited.insert(p.pid, p);
        self.exited.get(&event.pid)
    }

    fn touch(&mut self, event: &Event) -> Option<Change> {
        if !self.live.contains_key(&event.pid) {
            let p = seed::one(&self.host, &mut self.resolver, event.pid)?;
            self.live.insert(event.pid, p);
            return Some(Change::New);
        }
        if self.live.get(&event.pid)?.cgroup_id == event.cgroup_id {
            return Some(Change::Unchanged);
        }
        let cgroup = self.cgroup_path(event.cgroup_id);
        let p = self.live.get_mut(&event.pid)?;
        p.cgroup_id = event.cgroup_id;
        p.moved_from = Some(std::mem::replace(&mut p.cgroup, cgroup));
        Some(Change::Moved)
    }

    /// A process by pid, reading `/proc` for one the table has not seen yet.
    fn known_or_read(&mut self, pid: u32) -> Option<&Process> {
        if pid == 0 {
            return None;
        }
        if !self.live.contains_key(&pid) && !self.exited.contains_key(&pid) {
            let p = seed::one(&self.host, &mut self.resolver, pid)?;
            self.live.insert(pid, p);
        }
        self.get(pid)
    }

    fn evict(&mut self, now_ns: u64) {
        while let Some(&(at, pid, start)) = self.exit_order.front() {
            if now_ns.saturating_sub(at) < EXITED_GRACE_NS && self.exit_order.len() <= EXITED_MAX {
                break;
            }
            self.exit_order.pop_front();
            // Only if the slot still holds that same process (not a later one with this pid).
            if self
                .exited
                .get(&pid)
                .is_some_and(|p| p.start_ticks == start)
            {
                self.exited.remove(&pid);
            }
        }
    }
}

#[cfg(test)]
mod tests;
