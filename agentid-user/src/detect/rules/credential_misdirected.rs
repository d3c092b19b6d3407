//! `credential-misdirected`: a credential of a known service presented, in a request
//! header sent over TLS, to a host outside that service's domains — an `OpenAI` key sent to
//! `evil.example`. Exfiltration in progress; no issuer-side anchor reports it.
use std::collections::BTreeMap;

use super::Rule;
use crate::{
    credentials::{CredKind, Source},
    detect::{Evidence, Incidents, incidents::AlertDraft, seen::Seen, sightings::CredentialView},
};

rule!(
    CredentialMisdirected,
    CREDENTIAL_MISDIRECTED,
    "credential-misdirected",
    High,
    "A credential of a known service (OpenAI, Anthropic, GitHub, GitLab, Slack, Google, AWS) sent in a TLS request header to a host outside that service's domains.",
    ["ASI03"],
    ["T3", "T9"],
    ["L6"],
    ["MEASURE 2.7", "MANAGE 4.1"]
);

/// Each service kind's domains (a host matches a domain or any subdomain of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDomains(BTreeMap<CredKind, Vec<String>>);

/// The built-in table (the README documents it; `[service_domains]` overrides a kind).
const DEFAULTS: [(CredKind, &[&str]); 7] = [
    (CredKind::Openai, &["openai.com", "openai.azure.com"]),
    (CredKind::Anthropic, &["anthropic.com", "claude.ai"]),
    (
        CredKind::Github,
        &["github.com", "githubusercontent.com", "ghcr.io"],
    ),
    (CredKind::Gitlab, &["gitlab.com"]),
    (CredKind::Slack, &["slack.com"]),
    (CredKind::Google, &["googleapis.com", "google.com"]),
    (CredKind::Aws, &["amazonaws.com", "aws.amazon.com"]),
];

impl Default for ServiceDomains {
    fn default() -> Self {
        Self(
            DEFAULTS
                .iter()
                .map(|(k, d)| (*k, d.iter().map(|s| (*s).to_owned()).collect()))
                .collect(),
        )
    }
}

impl ServiceDomains {
    /// The defaults with `overrides` (kind name → domains) replacing whole entries.
    /// Unknown kind names are an error, named.
    pub fn with_overrides(overrides: &BTreeMap<String, Vec<String>>) -> Result<Self, String> {
        let mut table = Self::default();
        for (name, domains) in overrides {
            let kind: CredKind = name
                .parse()
                .map_err(|()| format!("service_domains: unknown credential kind {name:?}"))?;
            let domains = domains
                .iter()
                .map(|d| d.trim_start_matches('.').to_ascii_lowercase())
                .collect();
            table.0.insert(kind, domains);
        }
        Ok(table)
    }

    /// Whether `host` is outside the domains of `kind` (`None`: not a service kind).
    fn misdirected(&self, kind: CredKind, host: &str) -> Option<bool> {
        let domains = self.0.get(&kind)?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let inside = domains.iter().any(|d| {
            host == *d
                || host
                    .strip_suffix(d.as_str())
                    .is_some_and(|h| h.ends_with('.'))
        });
        Some(!inside)
    }
}

#[derive(Debug, Default)]
pub struct CredentialMisdirected {
    pub domains: ServiceDomains,
}

impl Rule for CredentialMisdirected {
    fn on_credential(&mut self, seen: &Seen<'_>, cred: &CredentialView<'_>, book: &mut Incidents) {
        let Source::Tls { host, header } = &cred.observation.source else {
            return;
        };
        let kind = cred.observation.kind;
        if host.is_empty() || self.domains.misdirected(kind, host) != Some(true) {
            return;
        }
        let fp = &cred.observation.fingerprint;
        let agent = seen.alert_agent();
        let mut draft = AlertDraft::new(
            &CREDENTIAL_MISDIRECTED,
            &[&fp.full_hex(), agent.id.as_str(), host],
            seen.event.event.time,
            format!("{} sent a {kind} credential to {host}", agent.label()),
            format!(
                "{fp} ({kind}) was sent in the {header} header to {host}, outside the \
                 {kind} service's domains"
            ),
        );
        draft.evidence = Evidence {
            processes: vec![seen.process()],
            connections: vec![],
            credential: Some(cred.evidence.clone()),
        };
        draft.agents = vec![agent];
        book.raise(draft);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_subdomains_inside_lookalikes_outside() {
        let t = ServiceDomains::default();
        assert_eq!(
            t.misdirected(CredKind::Openai, "api.openai.com"),
            Some(false)
        );
        assert_eq!(t.misdirected(CredKind::Openai, "openai.com."), Some(false));
        assert_eq!(t.misdirected(CredKind::Openai, "evil.example"), Some(true));
        assert_eq!(t.misdirected(CredKind::Openai, "notopenai.com"), Some(true));
        assert_eq!(
            t.misdirected(CredKind::Openai, "openai.com.evil.example"),
            Some(true)
        );
        assert_eq!(t.misdirected(CredKind::Generic, "evil.example"), None);
    }

    #[test]
    fn overrides_replace_a_kind_and_unknown_kinds_are_refused() {
        let mut o = BTreeMap::new();
        o.insert("openai".to_owned(), vec!["llm-proxy.internal".to_owned()]);
        let t = ServiceDomains::with_overrides(&o).expect("table");
        assert_eq!(
            t.misdirected(CredKind::Openai, "llm-proxy.internal"),
            Some(false)
        );
        assert_eq!(
            t.misdirected(CredKind::Openai, "api.openai.com"),
            Some(true)
        );
        o.insert("nope".to_owned(), vec![]);
        assert!(ServiceDomains::with_overrides(&o).is_err());
    }
}
