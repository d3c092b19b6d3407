//! `[fleet]` in `agentid.toml`: which NATS servers this host joins, as which host.
use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

/// Default bound of the fleet spool: 64 MiB.
const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `nats://host:port` (or `tls://`) URLs of the cluster's servers.
    pub servers: Vec<String>,
    /// This host's name in the fleet. Default: the hostname.
    #[serde(default)]
    pub host: Option<String>,
    /// A NATS `.creds` file (JWT and NKey seed).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// CA certificate(s) to trust for the servers' TLS (also turns TLS on).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Replicas of each bucket (1 for a single server, 3 for a 3-node cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How often agent presence is published; presence older than three of these is
    /// not counted.
    #[serde(default = "default_heartbeat", with = "humantime_secs")]
    pub heartbeat: Duration,
    /// Bound of the on-disk spool that holds records while NATS cannot take them.
    #[serde(default = "default_spool")]
    pub spool_max_bytes: u64,
}

fn default_replicas() -> usize {
    1
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}

fn default_spool() -> u64 {
    DEFAULT_SPOOL_MAX_BYTES
}

impl FleetConfig {
    /// The checks `Config::parse` makes; `fleet_key`: whether `fleet_key_file` is set.
    pub fn validate(&self, fleet_key: bool) -> Result<(), String> {
        let Self {
            servers,
            host,
            credentials_file,
            ca_file,
            replicas,
            heartbeat,
            spool_max_bytes,
        } = self;
        if !fleet_key {
            return Err(
                "[fleet] needs fleet_key_file: every host must give a credential the same fingerprint"
                    .into(),
            );
        }
        if servers.is_empty() {
            return Err("fleet.servers: name at least one NATS server".into());
        }
        for s in servers {
            if let Err(e) = s.parse::<async_nats::ServerAddr>() {
                return Err(format!("fleet.servers: {s:?}: {e}"));
            }
        }
        if let Some(h) = host
            && !super::records::valid_token(h)
        {
            return Err(format!(
                "fleet.host: {h:?} must be letters, digits, `-` or `_`"
            ));
        }
        for (name, p) in [("credentials_file", credentials_file), ("ca_file", ca_file)] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                return Err(format!(
                    "fleet.{name}: {} must be an absolute path",
                    p.display()
                ));
            }
        }
        if !(1..=5).contains(replicas) {
            return Err("fleet.replicas: must be 1 to 5".into());
        }
        if heartbeat.is_zero() {
            return Err("fleet.heartbeat: must be longer than 0s".into());
        }
        if *spool_max_bytes < 4096 {
            return Err("fleet.spool_max_bytes: must be at least 4096".into());
        }
        Ok(())
    }

    /// This host's fleet name: `host`, else the hostname made a valid token.
    pub fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            let h = crate::process::HostIds::current().host;
            let t: String = h
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if t.is_empty() { "localhost".into() } else { t }
        })
    }
}

mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}
