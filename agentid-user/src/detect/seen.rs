//! What every rule sees of one event: the attributed event, its agent's registration and
//! the credentials found in it — and the evidence built from them, the same way for all.
use crate::{
    attribution::AttributedEvent,
    credentials::Findings,
    event::Detail,
    identity::{Agent, Registry, SpiffeId},
};

use super::{AlertAgent, ConnectionEvidence, ProcessEvidence, alert::Principal};

/// One attributed event as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub event: &'a AttributedEvent,
    /// The registration of the event's agent (`None` for unregistered workloads).
    pub agent: Option<&'a Agent>,
    pub findings: &'a Findings,
    pub registry: &'a Registry,
}

impl<'a> Seen<'a> {
    pub fn new(event: &'a AttributedEvent, findings: &'a Findings, registry: &'a Registry) -> Self {
        let agent = event
            .agent
            .as_ref()
            .and_then(|a| registry.get_str(&a.id))
            .map(AsRef::as_ref);
        Self {
            event,
            agent,
            findings,
            registry,
        }
    }

    /// Whose policies bind this event: its agent's, then — unless the receiving agent
    /// declared the hand-off (`accepts_delegation_from`), which makes its policy the one
    /// that governs — those of every registered agent it acts for: a tool started by agent
    /// A under its own identity must not reach what A may not. The flag says whether the
    /// policy is the agent's own.
    pub fn policy_owners(&self) -> impl Iterator<Item = (&'a Agent, bool)> {
        let registry = self.registry;
        let inherited: &[String] = if self.event.delegation_declared {
            &[]
        } else {
            &self.event.acting_for
        };
        let chain = inherited
            .iter()
            .rev()
            .filter_map(move |id| registry.get_str(id))
            .map(|a| (a.as_ref(), false));
        self.agent.map(|a| (a, true)).into_iter().chain(chain)
    }

    /// The event's agent; attribution only names registered (valid) SPIFFE IDs.
    pub fn principal(&self) -> Principal {
        self.event
            .agent
            .as_ref()
            .and_then(|a| SpiffeId::parse(&a.id).ok())
            .map_or(Principal::Unregistered, Principal::Agent)
    }

    /// The acting agent as an alert names it (with the event's session).
    pub fn alert_agent(&self) -> AlertAgent {
        let ev = self.event;
        match (self.principal(), &ev.agent) {
            (id @ Principal::Agent(_), Some(a)) => AlertAgent {
                id,
                name: a.name.clone(),
                owner: a.owner.clone(),
                environment: a.environment.clone(),
                session: ev.session.clone(),
            },
            _ => AlertAgent::unregistered(),
        }
    }

    pub fn process(&self) -> ProcessEvidence {
        let ev = self.event;
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

    pub fn connection(&self) -> Option<ConnectionEvidence> {
        match &self.event.event.detail {
            Detail::Sock {
                dst_ip,
                dst_port,
                protocol,
                dst_names,
            } => Some(ConnectionEvidence {
                dst_ip: *dst_ip,
                dst_port: *dst_port,
                protocol: protocol.to_string(),
                dst_names: dst_names.clone(),
            }),
            _ => None,
        }
    }
}

/// A policy violation's incident subject and how its title names the policy: the agent's
/// own (`its`), or that of an agent it acts for (a separate incident per pair).
pub(crate) fn policy_subject<'a>(
    agent: &'a Agent,
    owner: &'a Agent,
    own: bool,
    what: &'a str,
) -> (Vec<&'a str>, String) {
    if own {
        (vec![agent.id.as_str(), what], "its".to_owned())
    } else {
        (
            vec![owner.id.as_str(), what, "for", agent.id.as_str()],
            format!("{}'s", owner.id),
        )
    }
}

impl AlertAgent {
    pub fn unregistered() -> Self {
        Self {
            id: Principal::Unregistered,
            name: None,
            owner: None,
            environment: None,
            session: None,
        }
    }

    /// An agent known only by its id (the start of a delegation chain, say).
    pub fn bare(id: SpiffeId) -> Self {
        Self {
            id: Principal::Agent(id),
            ..Self::unregistered()
        }
    }

    /// How titles name the agent: its name, else its id.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.id.to_string())
    }
}
