//! `agentid policy suggest`: the `[agent.policy]` that would have allowed everything an
//! agent did, from its recorded events — learn in monitor mode, then enforce.
use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr};

use crate::{api::types::EventRecord, event::EventKind};

/// What an agent did, reduced to policy entries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Suggestion {
    /// `name:port` where the agent's DNS named the address, `address:port` otherwise.
    pub egress: BTreeSet<String>,
    /// Executables run (as the exec named them: what `tools` is matched against).
    pub tools: BTreeSet<String>,
    pub events: usize,
}

impl Suggestion {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a EventRecord>) -> Self {
        let mut s = Self::default();
        for e in events {
            s.events += 1;
            match e.kind {
                EventKind::Connect | EventKind::Send => {
                    let (Some(ip), Some(port)) = (e.dst_ip, e.dst_port) else {
                        continue;
                    };
                    // One name is enough: a rule matches when any name of the address
                    // does. The smallest, so the suggestion is stable.
                    let host = match e.dst_names.as_ref().and_then(|n| n.iter().min()) {
                        Some(name) => name.clone(),
                        None => match ip.to_canonical() {
                            IpAddr::V4(v4) => v4.to_string(),
                            IpAddr::V6(v6) => format!("[{v6}]"),
                        },
                    };
                    s.egress.insert(format!("{host}:{port}"));
                }
                EventKind::Exec => {
                    if let Some(f) = &e.filename {
                        s.tools.insert(glob_literal(f));
                    }
                }
                _ => {}
            }
        }
        s
    }

    /// A `[agent.policy]` table ready to paste into the agent's `[[agent]]`.
    pub fn to_toml(&self, agent: &str, since: &str) -> String {
        let Self {
            egress,
            tools,
            events,
        } = self;
        let mut out = format!(
            "# suggested by `agentid policy suggest` for {agent} from {events} events since {since}\n\
             # (monitor mode: what it did, not what it should do; review before enforcing)\n\
             [agent.policy]\n"
        );
        for (key, values) in [("egress", egress), ("tools", tools)] {
            let _ = writeln!(out, "{key} = [");
            for v in values {
                // JSON string escapes are valid TOML basic-string escapes.
                let quoted = serde_json::to_string(v).unwrap_or_default();
                let _ = writeln!(out, "  {quoted},");
            }
            out.push_str("]\n");
        }
        out
    }
}

/// `path` as a `tools` glob matching exactly it: glob metacharacters escaped.
fn glob_literal(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Suggestion;
    use crate::{api::types::EventRecord, identity::Registry};

    fn ev(json: &str) -> EventRecord {
        let base = r#""time":"2026-01-01T00:00:00Z","pid":1,"ppid":null,"tid":1,"uid":0,"gid":0,"cgroup_id":1,"comm":"x","exec_id":null,"parent_exec_id":null,"agent":"unregistered","session":null,"lineage":[],"acting_for":[]"#;
        serde_json::from_str(&format!("{{{base},{json}}}")).unwrap()
    }

    #[test]
    fn suggests_names_where_known_addresses_otherwise_and_tools() {
        let events = [
            ev(
                r#""kind":"connect","dst_ip":"10.0.0.5","dst_port":443,"protocol":"tcp","dst_names":["api.example.test"]"#,
            ),
            ev(
                r#""kind":"connect","dst_ip":"10.0.0.6","dst_port":443,"protocol":"tcp","dst_names":["b.example.test","a.example.test"]"#,
            ),
            ev(
                r#""kind":"send","dst_ip":"::ffff:127.0.0.53","dst_port":53,"protocol":"udp","dst_names":[]"#,
            ),
            ev(r#""kind":"connect","dst_ip":"2001:db8::1","dst_port":8443,"protocol":"tcp""#),
            ev(r#""kind":"exec","filename":"/usr/bin/curl","argv":["curl"]"#),
            ev(r#""kind":"exec","filename":"/opt/my \"tool\" [1]*","argv":[]"#),
        ];
        let s = Suggestion::from_events(&events);
        assert_eq!(
            s.egress.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "127.0.0.53:53",
                "[2001:db8::1]:8443",
                "a.example.test:443",
                "api.example.test:443"
            ]
        );
        let toml = s.to_toml("spiffe://example.org/bot", "24h");
        // Pasted into a registration, it loads and allows what was done.
        let reg = Registry::parse_str(
            &format!(
                "[[agent]]\nid = \"spiffe://example.org/bot\"\n[[agent.selectors]]\nuid = 1\n{toml}"
            ),
            "suggested.toml",
        );
        assert!(reg.errors().is_empty(), "{:?}\n{toml}", reg.errors());
        let p = &reg.agents()[0].policy;
        assert!(p.allows_egress("10.0.0.6".parse().unwrap(), 443, &["a.example.test".into()]));
        assert!(p.allows_egress("2001:db8::1".parse().unwrap(), 8443, &[]));
        assert!(!p.allows_egress("10.0.0.6".parse().unwrap(), 443, &[]));
        assert!(p.allows_tool("/opt/my \"tool\" [1]*"));
        assert!(!p.allows_tool("/opt/my \"tool\" 1x"));
        assert!(p.allows_tool("/usr/bin/curl"));
        assert!(!p.allows_tool("/usr/bin/wget"));
    }
}
