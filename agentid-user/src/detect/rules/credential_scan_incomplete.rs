//! `credential-scan-incomplete`: an exec's arguments or environment could not be scanned
//! whole (beyond the capture cap, unreadable memory, records lost), so a credential there
//! would go unseen. Never a silent flag: the process is named.
use super::Rule;
use crate::{
    detect::{Evidence, Incidents, incidents::AlertDraft, seen::Seen},
    event::Detail,
};

rule!(
    unit CredentialScanIncomplete,
    CREDENTIAL_SCAN_INCOMPLETE,
    "credential-scan-incomplete",
    Medium,
    "An exec's arguments or environment could not be scanned whole (beyond the capture cap, unreadable, or records lost): a credential there would go unseen.",
    ["ASI03"],
    ["T3", "T8"],
    ["L5"],
    ["MEASURE 2.4"]
);

impl Rule for CredentialScanIncomplete {
    fn on_event(&mut self, seen: &Seen<'_>, book: &mut Incidents) {
        let Detail::Exec {
            filename,
            scan_incomplete: Some(why),
            ..
        } = &seen.event.event.detail
        else {
            return;
        };
        let a = seen.alert_agent();
        let process = seen.process();
        let pid = seen.event.event.pid;
        let who = process.exec_id.clone().unwrap_or_else(|| pid.to_string());
        let reasons: Vec<&str> = why.reasons().collect();
        let mut draft = AlertDraft::new(
            &CREDENTIAL_SCAN_INCOMPLETE,
            &[a.id.as_str(), &who],
            seen.event.event.time,
            format!("Credentials of {filename} (pid {pid}) not scanned whole"),
            format!(
                "{} ran {filename} (pid {pid}) whose arguments or environment could not be \
                 scanned whole ({}): a credential there would not be seen",
                a.label(),
                reasons.join(", ")
            ),
        );
        draft.agents = vec![a];
        draft.evidence = Evidence {
            processes: vec![process],
            ..Evidence::default()
        };
        book.raise(draft);
    }
}
