//! `tool-violation`: an exec outside the agent's `tools` allowlist.
use super::Rule;
use crate::{
    detect::{
        Evidence, Incidents,
        incidents::AlertDraft,
        seen::{self, Seen},
    },
    event::Detail,
};

rule!(
    unit ToolViolation,
    TOOL_VIOLATION,
    "tool-violation",
    Low,
    "An exec outside the agent's tools allowlist.",
    ["ASI02"],
    ["T2"],
    ["L4"],
    ["MEASURE 2.4"]
);

impl Rule for ToolViolation {
    fn on_event(&mut self, seen: &Seen<'_>, book: &mut Incidents) {
        let ev = &seen.event.event;
        let Detail::Exec { filename, .. } = &ev.detail else {
            return;
        };
        let Some(agent) = seen.agent else { return };
        let Some((owner, own)) = seen.policy_owners().find(|(owner, _)| {
            owner.policy.tools.is_some() && (ev.blocked || !owner.policy.allows_tool(filename))
        }) else {
            return;
        };
        let a = seen.alert_agent();
        let (subject, whose) = seen::policy_subject(agent, owner, own, filename);
        let mut draft = AlertDraft::new(
            &TOOL_VIOLATION,
            &subject,
            ev.time,
            format!(
                "{} ran {filename} outside {whose} tools allowlist",
                a.label()
            ),
            format!("{filename} is not in the tools policy of {}", owner.id),
        );
        draft.agents = vec![a];
        draft.action = Some(if ev.blocked { "blocked" } else { "allowed" });
        draft.evidence = Evidence {
            processes: vec![seen.process()],
            ..Evidence::default()
        };
        book.raise(draft);
    }
}
