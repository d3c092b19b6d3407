//! Attribution: turns a process-table event into "which agent, which session, launched by
//! whom, acting for whom".
//!
//! Identity is decided by the registry's selectors over facts the kernel and `/proc`
//! report (cgroup, uids, executable), never by anything the workload says about itself.
//! It is decided again whenever those facts change: on fork, exec, and when a process
//! shows up in another cgroup.
//!
//! When a process whose identity differs from the one it came from (its parent at fork, or
//! itself before an exec or a cgroup move) is attributed to agent B, and the previous
//! identity was agent A, B's session records `acting_for = [.., A]`: the original actor
//! stays on every later event of that session, across any number of hand-offs.
mod workload;

use std::sync::Arc;

use serde::Serialize;

use crate::{
    event::Event,
    identity::{Agent, Match, Registry, SpiffeId},
    process::{Change, ExecId, Process, ProcessTable},
};

pub use workload::WorkloadFacts;

/// Longest lineage kept per process: enough for any real tree, bounded for hostile ones.
const MAX_LINEAGE: usize = 64;

/// The summary of an agent carried on every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AgentRef {
    pub id: String,
    pub name: Option<String>,
    pub owner: Option<String>,
    pub environment: Option<String>,
}

impl AgentRef {
    fn of(agent: &Agent) -> Self {
        Self {
            id: agent.id.as_str().to_owned(),
            name: agent.name.clone(),
            owner: agent.owner.clone(),
            environment: agent.environment.clone(),
        }
    }
}

/// The identity of one process, shared by reference between processes of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcIdentity {
    /// `None`: unregistered (or ambiguous).
    pub agent: Option<AgentRef>,
    /// Every agent whose selectors matched when more than one did: reported, not resolved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ambiguous: Vec<String>,
    /// One running instance of the agent: `name/pid-starttime` of its root process.
    pub session: Option<String>,
    /// The root process of the session.
    #[serde(skip)]
    pub session_root: Option<ExecId>,
    /// Agents this work was handed from, oldest first.
    pub acting_for: Vec<String>,
    /// Ancestor exec ids up to the session root, nearest first.
    pub lineage: Vec<ExecId>,
    /// When the last hand-off (the latest `acting_for` entry) was declared by the receiving
    /// agent's `accepts_delegation_from`.
    #[serde(skip)]
    pub delegation_declared: bool,
    /// Set when a process of this agent left for a cgroup no agent's selectors match (see
    /// [`Transition::Escape`]): the cgroup it went to. It stays this agent's work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escaped_to: Option<String>,
}

/// How identity passed on the event that changed it, for the rules that judge hand-offs.
///
/// The written rule (README "Attribution"): a process's identity is decided from the
/// registry and the identity it comes from (its parent's, or its own before an exec or a
/// cgroup move):
/// 1. one agent matches → that agent; if it differs from the previous one, a hand-off
///    (the previous agent joins `acting_for`);
/// 2. several match → the previous agent and its `acting_for` chain are not destinations:
///    if exactly one other remains, it is that agent acting for the previous one (exec'ing
///    a tool registered under its own identity); if none remains, the previous agent
///    continues; if two or more remain, the identity is [`Transition::Ambiguous`];
/// 3. none matches, or it stays ambiguous, and there is a previous agent → the process stays
///    that agent's work (its policy keeps applying); having left through a cgroup change
///    (a move, or a child born in another cgroup) it is [`Transition::Escape`];
/// 4. none matches and nothing came before → unregistered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// A registered agent's process moved (or was born) where no agent's selectors match.
    Escape { from: String, to: String },
    /// Two or more agents other than the previous one (and its chain) match.
    Ambiguous { candidates: Vec<String> },
}

impl ProcIdentity {
    pub fn unregistered() -> Self {
        Self {
            agent: None,
            ambiguous: Vec::new(),
            session: None,
            session_root: None,
            acting_for: Vec::new(),
            lineage: Vec::new(),
            delegation_declared: true,
            escaped_to: None,
        }
    }

    pub fn agent_id(&self) -> Option<&str> {
        self.agent.as_ref().map(|a| a.id.as_str())
    }
}

/// An event with its attribution: the unit every later stage consumes.
///
/// The identity is shared (`Arc`) with every other event of the process: copying agent,
/// session, chain and lineage into each event was a fifth of the pipeline's time. It reads
/// as if it were inline (`ev.agent`, `ev.session`) through `Deref`.
#[derive(Debug, Clone)]
pub struct AttributedEvent {
    pub event: Event,
    pub exec_id: Option<ExecId>,
    pub parent_exec_id: Option<ExecId>,
    pub identity: Arc<ProcIdentity>,
    /// The process's executable (for events other than exec, which carry `filename`).
    pub exe: Option<String>,
    pub loginuid: Option<u32>,
    /// Set on the one event whose processing changed the identity in a way rules judge.
    pub transition: Option<Transition>,
}

impl std::ops::Deref for AttributedEvent {
    type Target = ProcIdentity;

    fn deref(&self) -> &ProcIdentity {
        &self.identity
    }
}

/// The wire form: the event's fields, then its attribution (`agent` is the string
/// `"unregistered"` when no agent matched).
impl Serialize for AttributedEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(flatten)]
            event: &'a Event,
            exec_id: &'a Option<ExecId>,
            parent_exec_id: &'a Option<ExecId>,
            #[serde(serialize_with = "agent_or_unregistered")]
            agent: &'a Option<AgentRef>,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            ambiguous: &'a [String],
            session: &'a Option<String>,
            acting_for: &'a [String],
            lineage: &'a [ExecId],
            #[serde(skip_serializing_if = "Option::is_none")]
            escaped_to: &'a Option<String>,
        }
        let Self {
            event,
            exec_id,
            parent_exec_id,
            identity,
            exe: _,
            loginuid: _,
            transition: _,
        } = self;
        let ProcIdentity {
            agent,
            ambiguous,
            session,
            session_root: _,
            acting_for,
            lineage,
            delegation_declared: _,
            escaped_to,
        } = &**identity;
        Wire {
            event,
            exec_id,
            parent_exec_id,
            agent,
            ambiguous,
            session,
            acting_for,
            lineage,
            escaped_to,
        }
        .serialize(s)
    }
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with passes &T"
)]
fn agent_or_unregistered<S: serde::Serializer>(
    a: &&Option<AgentRef>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => a.serialize(s),
        None => s.serialize_str("unregistered"),
    }
}

/// Identity per live process (by pid, checked against the exec id).
#[derive(Debug, Default)]
pub struct Attributor {
    identities: rustc_hash::FxHashMap<u32, (ExecId, Arc<ProcIdentity>)>,
    facts: WorkloadFacts,
}

impl Attributor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attributes every process already in the table (after `/proc` seeding), parents
    /// before children so sessions and chains form as they would have live.
    pub fn seed(&mut self, table: &ProcessTable, registry: &Registry) {
        let mut procs: Vec<&Process> = table.live().collect();
        procs.sort_by_key(|p| (p.start_ticks, p.pid));
        for p in procs {
            let parent = table.get(p.ppid);
            let prev = parent.and_then(|parent| self.identity_of(parent));
            let left = parent
                .map(|parent| parent.cgroup.as_str())
                .filter(|c| *c != p.cgroup);
            // No event to carry a transition at start: the identity is what matters.
            let (id, _) = self.decide(p, prev.as_deref(), true, left, registry);
            self.identities.insert(p.pid, (p.exec_id.clone(), id));
        }
    }

    /// The current identity of a process, if decided.
    /// Heap bytes of the per-process map (slots and exec ids); the identities themselves
    /// are shared by the processes of a workload and not counted.
    pub fn heap_bytes(&self) -> usize {
        self.identities.capacity() * (size_of::<(u32, (ExecId, Arc<ProcIdentity>))>() + 1)
            + self
                .identities
                .values()
                .map(|(e, _)| e.heap_bytes())
                .sum::<usize>()
    }

    pub fn identity_of(&self, p: &Process) -> Option<Arc<ProcIdentity>> {
        self.identities
            .get(&p.pid)
            .filter(|(exec_id, _)| *exec_id == p.exec_id)
            .map(|(_, id)| Arc::clone(id))
    }

    /// Attributes an event about a process the table already holds *without* applying it:
    /// the process's current identity, nothing changed. For events that describe a known
    /// process rather than something it did, such as a seeded process's exec rebuilt from
    /// `/proc` for the credential scan. An orphan when the process is unknown.
    pub fn attribute_current(&self, table: &ProcessTable, mut event: Event) -> AttributedEvent {
        let Some(process) = table.get(event.pid) else {
            return AttributedEvent::orphan(event);
        };
        let Some(identity) = self.identity_of(process) else {
            return AttributedEvent::orphan(event);
        };
        event.cgroup = Some(process.cgroup.clone());
        // Nothing changed hands: the process is as it was.
        AttributedEvent::of(process, event, identity, None)
    }

    /// Applies an event to the table and attributes it.
    pub fn attribute(
        &mut self,
        table: &mut ProcessTable,
        registry: &Registry,
        event: Event,
    ) -> AttributedEvent {
        let Some(change) = table.apply(&event).map(|(_, change)| change) else {
            return AttributedEvent::orphan(event);
        };
        // Borrowed again, shared: the parent is looked up in the same table below.
        let Some(process) = table.get(event.pid) else {
            return AttributedEvent::orphan(event);
        };
        let mut event = event;
        event.cgroup = Some(process.cgroup.clone());
        let current = self.identity_of(process);
        let (identity, transition) = match (change, current) {
            (Change::Unchanged | Change::Exited, Some(id)) => (id, None),
            (Change::New, _) | (_, None) => {
                let parent = table
                    .get(process.ppid)
                    .filter(|parent| process.parent_exec_id.as_ref() == Some(&parent.exec_id));
                let prev = parent.and_then(|parent| self.identity_of(parent));
                let left = parent
                    .map(|parent| parent.cgroup.as_str())
                    .filter(|c| *c != process.cgroup);
                let (id, t) = self.decide(process, prev.as_deref(), true, left, registry);
                self.identities
                    .insert(process.pid, (process.exec_id.clone(), Arc::clone(&id)));
                (id, t)
            }
            (Change::Exec | Change::Moved, Some(prev)) => {
                let left = process
                    .moved_from
                    .as_deref()
                    .filter(|c| change == Change::Moved && *c != process.cgroup);
                let (id, t) = self.decide(process, Some(&prev), false, left, registry);
                self.identities
                    .insert(process.pid, (process.exec_id.clone(), Arc::clone(&id)));
                (id, t)
            }
        };
        if change == Change::Exited {
            self.identities.remove(&process.pid);
        }
        AttributedEvent::of(process, event, identity, transition)
    }

    /// Decides a process's identity from the registry, given the identity it comes from:
    /// its parent's (`from_parent`, a new process) or its own before an exec/move.
    /// `left_cgroup`: the cgroup it came from, when it is not in that cgroup any more (a
    /// move, or a child born elsewhere). The rule is written down at [`Transition`].
    fn decide(
        &mut self,
        p: &Process,
        prev: Option<&ProcIdentity>,
        from_parent: bool,
        left_cgroup: Option<&str>,
        registry: &Registry,
    ) -> (Arc<ProcIdentity>, Option<Transition>) {
        let matched = self.facts.match_in(p, registry);
        let prev_agent = prev.and_then(|i| i.agent.as_ref());
        let (agent, ambiguous) = resolve(matched, prev);
        let parent_exec = if from_parent {
            p.parent_exec_id.clone()
        } else {
            None
        };
        let same_agent = match (&agent, prev_agent) {
            (Some(a), Some(b)) => a.id.as_str() == b.id,
            (None, None) => true,
            _ => false,
        };
        // Rules 2-3: no (single) destination but a previous agent: still that agent's work.
        let stays = agent.is_none() && prev_agent.is_some();
        if (same_agent || stays)
            && let Some(prev) = prev
        {
            let mut id = prev.clone();
            let transition = if !ambiguous.is_empty() {
                Some(Transition::Ambiguous {
                    candidates: ambiguous.clone(),
                })
            } else if stays && let Some(from) = left_cgroup {
                id.escaped_to = Some(p.cgroup.clone());
                Some(Transition::Escape {
                    from: from.to_owned(),
                    to: p.cgroup.clone(),
                })
            } else {
                None
            };
            id.ambiguous = ambiguous;
            if let Some(parent) = parent_exec {
                id.lineage.insert(0, parent);
                id.lineage.truncate(MAX_LINEAGE);
            }
            return (Arc::new(id), transition);
        }
        let transition = (!ambiguous.is_empty()).then(|| Transition::Ambiguous {
            candidates: ambiguous.clone(),
        });
        // A hand-off (or a first sight): the previous agent joins the chain.
        let mut acting_for = prev.map(|i| i.acting_for.clone()).unwrap_or_default();
        let mut delegation_declared = true;
        if let Some(from) = prev_agent {
            acting_for.push(from.id.clone());
            delegation_declared = agent.as_ref().is_some_and(|to| {
                SpiffeId::parse(&from.id).is_ok_and(|from| to.policy.accepts_delegation(&from))
            });
        }
        let Some(agent) = agent else {
            let mut id = ProcIdentity::unregistered();
            id.ambiguous = ambiguous;
            id.acting_for = acting_for;
            id.delegation_declared = delegation_declared;
            if let Some(parent) = parent_exec {
                id.lineage = prev.map(|i| i.lineage.clone()).unwrap_or_default();
                id.lineage.insert(0, parent);
                id.lineage.truncate(MAX_LINEAGE);
            }
            return (Arc::new(id), transition);
        };
        let id = ProcIdentity {
            session: Some(format!(
                "{}/{}-{}",
                short_name(&agent),
                p.pid,
                p.start_ticks
            )),
            session_root: Some(p.exec_id.clone()),
            agent: Some(AgentRef::of(&agent)),
            ambiguous,
            acting_for,
            lineage: Vec::new(),
            delegation_declared,
            escaped_to: None,
        };
        (Arc::new(id), transition)
    }
}

/// Rule 2 of [`Transition`]: the agent a match names, or the candidates when it stays
/// ambiguous. The identity a process comes from (and its chain) is not a destination.
fn resolve(matched: Match, prev: Option<&ProcIdentity>) -> (Option<Arc<Agent>>, Vec<String>) {
    let all = match matched {
        Match::Unregistered => return (None, Vec::new()),
        Match::Agent(a) => return (Some(a), Vec::new()),
        Match::Ambiguous(all) => all,
    };
    let origin = |a: &Agent| {
        prev.is_some_and(|i| {
            i.agent_id() == Some(a.id.as_str()) || i.acting_for.iter().any(|x| x == a.id.as_str())
        })
    };
    let others: Vec<&Arc<Agent>> = all.iter().filter(|a| !origin(a)).collect();
    match others.as_slice() {
        [one] => (Some(Arc::clone(one)), Vec::new()),
        // Every candidate is where it came from: the previous agent continues.
        [] => (None, Vec::new()),
        _ => (
            None,
            others.iter().map(|a| a.id.as_str().to_owned()).collect(),
        ),
    }
}

/// The agent's name, or the last segment of its SPIFFE ID.
fn short_name(agent: &Agent) -> &str {
    agent
        .name
        .as_deref()
        .unwrap_or_else(|| agent.id.as_str().rsplit('/').next().unwrap_or(""))
}

impl AttributedEvent {
    /// An event of a known process, with the identity decided for it.
    fn of(
        process: &Process,
        event: Event,
        identity: Arc<ProcIdentity>,
        transition: Option<Transition>,
    ) -> Self {
        Self {
            exe: Some(process.exe.clone()),
            loginuid: process.loginuid,
            exec_id: Some(process.exec_id.clone()),
            parent_exec_id: process.parent_exec_id.clone(),
            event,
            identity,
            transition,
        }
    }

    /// An event whose process could not be known (gone before `/proc` could be read).
    fn orphan(event: Event) -> Self {
        Self {
            event,
            exec_id: None,
            parent_exec_id: None,
            identity: Arc::new(ProcIdentity::unregistered()),
            exe: None,
            loginuid: None,
            transition: None,
        }
    }
}
