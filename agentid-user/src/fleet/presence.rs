//! This host's agent presence, from the live process table.
use std::collections::{BTreeMap, BTreeSet};

use super::records::{Presence, now_ms};
use crate::state::LiveView;

/// One record per registered agent with live processes here.
pub fn collect(view: &LiveView, host: &str) -> Vec<Presence> {
    let mut by_agent: BTreeMap<&str, (usize, BTreeSet<&str>)> = BTreeMap::new();
    for (_, identity) in &view.processes {
        let Some(identity) = identity else { continue };
        let Some(agent) = &identity.agent else {
            continue;
        };
        let e = by_agent.entry(agent.id.as_str()).or_default();
        e.0 += 1;
        if let Some(s) = &identity.session {
            e.1.insert(s.as_str());
        }
    }
    let heartbeat_ms = now_ms();
    by_agent
        .into_iter()
        .map(|(agent, (processes, sessions))| Presence {
            agent: agent.to_owned(),
            host: host.to_owned(),
            sessions: sessions.len(),
            processes,
            heartbeat_ms,
        })
        .collect()
}
