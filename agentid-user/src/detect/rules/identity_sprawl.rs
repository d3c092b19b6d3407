//! `identity-sprawl`: an agent identity live on more fleet hosts than its registration
//! allows (`[agent.policy] max_hosts`), or on a host its `hosts` globs do not name. Judged
//! from the fleet's presence records, so it exists only with `[fleet]`.
use std::time::SystemTime;

use super::credential_reuse::fleet_agents;
use crate::{
    detect::{Alert, Incidents, incidents::AlertDraft},
    identity::Policy,
};

rule!(
    unit IdentitySprawl,
    IDENTITY_SPRAWL,
    "identity-sprawl",
    Medium,
    "An agent identity live on more fleet hosts than its max_hosts, or on a host its hosts list does not name.",
    ["ASI03"],
    ["T9"],
    ["L7"],
    ["MANAGE 4.1"]
);

/// Why `hosts` (where `agent` is live now) break `policy`, if they do.
pub fn sprawl_reason(policy: &Policy, hosts: &[&str]) -> Option<String> {
    let mut why = Vec::new();
    if let Some(max) = policy.max_hosts
        && hosts.len() > max
    {
        why.push(format!("live on {} hosts, max_hosts = {max}", hosts.len()));
    }
    if let Some(allowed) = &policy.hosts {
        let outside: Vec<&str> = hosts
            .iter()
            .copied()
            .filter(|h| !allowed.is_match(h))
            .collect();
        if !outside.is_empty() {
            why.push(format!("on {} outside its hosts list", outside.join(", ")));
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Raises (or updates) the agent's incident: one per agent, its count the times the fleet
/// saw the sprawl grow. `holders`: (agent, host) pairs.
pub fn identity_sprawl(
    book: &mut Incidents,
    agent: &str,
    holders: &[(String, String)],
    reason: &str,
    now: SystemTime,
) -> Alert {
    let hosts: Vec<&str> = holders.iter().map(|(_, h)| h.as_str()).collect();
    let mut draft = AlertDraft::new(
        &IDENTITY_SPRAWL,
        &["fleet", agent],
        now,
        format!("Agent {agent} live on {} hosts", hosts.len()),
        format!("{agent} is live on {}: {reason}", hosts.join(", ")),
    );
    draft.agents = fleet_agents(holders);
    book.raise(draft)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::GlobList;

    #[test]
    fn max_hosts_and_host_globs() {
        let p = Policy {
            max_hosts: Some(1),
            ..Policy::default()
        };
        assert_eq!(sprawl_reason(&p, &["h1"]), None);
        assert!(
            sprawl_reason(&p, &["h1", "h2"])
                .unwrap()
                .contains("max_hosts = 1")
        );
        let p = Policy {
            hosts: Some(GlobList::new(&["web-*"]).unwrap()),
            ..Policy::default()
        };
        assert_eq!(sprawl_reason(&p, &["web-1", "web-2"]), None);
        assert!(
            sprawl_reason(&p, &["web-1", "db-1"])
                .unwrap()
                .contains("db-1")
        );
        assert_eq!(sprawl_reason(&Policy::default(), &["a", "b", "c"]), None);
    }
}
