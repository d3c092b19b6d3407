//! The daemon's configuration (`/etc/agentid/agentid.toml`).
//!
//! Every field has a default, so no file at all is a valid configuration. Unknown keys are
//! errors: a misspelt option silently ignored is worse than a refusal to start.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/agentid/agentid.toml";
pub const DEFAULT_SOCKET: &str = "/run/agentid/agentid.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuditFsync {
    #[default]
    Interval,
    Record,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Events older than this are deleted from the store.
    #[serde(with = "humantime_serde_compat")]
    pub max_age: Duration,
    /// The store is kept under this size (oldest events go first).
    pub max_size_mb: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_hours(7 * 24),
            max_size_mb: 1024,
        }
    }
}

/// The audit log's retention: closed archives (compressed) go when older than `max_age`,
/// and the oldest go while the log is larger than `max_size_mb`; a signed prune record
/// says what went.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditRetention {
    #[serde(with = "humantime_serde_compat")]
    pub max_age: Duration,
    pub max_size_mb: u64,
}

impl Default for AuditRetention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_hours(90 * 24),
            max_size_mb: 2048,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Store, keys, spools and the lock file.
    pub state_dir: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    /// Group allowed to use the API besides root. Default: `agentid` when that group
    /// exists, else root only.
    pub socket_group: Option<String>,
    /// Agent registrations (`*.toml`).
    pub agents_dir: PathBuf,
    /// Alerts as JSON lines, always written (the sink of last resort).
    pub alerts_file: PathBuf,
    pub log_format: LogFormat,
    pub retention: Retention,
    /// cgroup globs (e.g. `/agents/**`) where any unregistered workload that execs or
    /// connects raises `shadow-agent`. Empty: the scope rule is off.
    pub watch_cgroups: Vec<String>,
    /// A fleet-wide fingerprint key (hex or base64, ≥ 32 bytes) so that hosts agree on
    /// fingerprints. Default: a host key generated at first start in the state dir.
    pub fleet_key_file: Option<PathBuf>,
    /// Audit log fsync policy: `interval` (once a second, ~95k records/s) or `record`
    /// (every record, ~800 records/s on a VM disk; a crash loses nothing).
    pub audit_fsync: AuditFsync,
    pub audit_retention: AuditRetention,
    /// SIEM sinks (`[[sinks]]`), each with its own spool under `STATE/spool/NAME`.
    pub sinks: Vec<crate::outputs::SinkConfig>,
    /// Pin the kernel programs and the ring buffer in bpffs, so that a killed daemon
    /// leaves them recording and the next start reads what waited. A clean stop unpins.
    pub pin: bool,
    /// Where this daemon's pins live. Default: `/sys/fs/bpf/agentid/state-HASH`, HASH of
    /// `state_dir` (daemons with different state dirs never share a set).
    pub pin_dir: Option<PathBuf>,
    /// The kernel's event ring buffer in KiB: a power of two, 256 KiB to 1 GiB. It counts
    /// twice in RSS (its pages are mapped twice); a larger one rides out longer reader
    /// stalls. Applies when the programs are loaded (a resumed pinned set keeps its size).
    pub ring_buffer_kib: u32,
    /// Names learned from the agents' own DNS (`[dns]`).
    pub dns: Dns,
    /// Where each service's credentials may be sent (`credential-misdirected`): a
    /// credential kind (`openai`, `github`, ...) → domains, replacing that kind's
    /// built-in list.
    pub service_domains: std::collections::BTreeMap<String, Vec<String>>,
    /// Serve Prometheus metrics (`/metrics`) on this TCP address. Off when absent; read at
    /// start.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Joining a fleet (`[fleet]`): credential sightings, presence, alerts and
    /// revocations shared on NATS JetStream. Absent: this host stands alone.
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// The SPIFFE Workload API issuing per-session JWT-SVIDs (`[issuer]`), off by default.
    pub issuer: Issuer,
}

/// `[issuer]`: per-session JWT-SVIDs for registered agents on a Workload API socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Issuer {
    pub enabled: bool,
    /// The Workload API socket (mode 0666: the kernel's attestation is the authorisation).
    pub socket: PathBuf,
    /// A token's lifetime at most (and never past its session's end).
    #[serde(with = "humantime_serde_compat")]
    pub ttl: Duration,
    /// Audiences a token may be minted for; empty: any.
    pub audiences: Vec<String>,
}

pub const DEFAULT_WORKLOAD_SOCKET: &str = "/run/agentid/workload.sock";

impl Default for Issuer {
    fn default() -> Self {
        Self {
            enabled: false,
            socket: PathBuf::from(DEFAULT_WORKLOAD_SOCKET),
            ttl: Duration::from_mins(5),
            audiences: Vec::new(),
        }
    }
}

/// `[dns]`: how long a name the agent resolved stays attached to its addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// At least this long, whatever the answer's TTL.
    #[serde(with = "humantime_serde_compat")]
    pub min_hold: Duration,
    /// This much longer than the TTL (or `min_hold`): clients cache a little longer.
    #[serde(with = "humantime_serde_compat")]
    pub grace: Duration,
    /// The host's resolvers, to which enforced agents may send queries for allowed names
    /// without an `egress` rule. Default: the `nameserver`s of `/etc/resolv.conf` and the
    /// systemd-resolved stub `127.0.0.53`.
    pub resolvers: Option<Vec<std::net::IpAddr>>,
}

impl Default for Dns {
    fn default() -> Self {
        let d = crate::dns::DnsOptions::default();
        Self {
            min_hold: d.min_hold,
            grace: d.grace,
            resolvers: None,
        }
    }
}

impl Dns {
    pub fn options(&self) -> crate::dns::DnsOptions {
        let Self {
            min_hold, grace, ..
        } = self;
        crate::dns::DnsOptions {
            min_hold: *min_hold,
            grace: *grace,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/agentid"),
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_group: None,
            agents_dir: PathBuf::from(crate::identity::DEFAULT_AGENTS_DIR),
            alerts_file: PathBuf::from("/var/log/agentid/alerts.jsonl"),
            log_format: LogFormat::Human,
            retention: Retention::default(),
            watch_cgroups: Vec::new(),
            fleet_key_file: None,
            sinks: Vec::new(),
            audit_fsync: AuditFsync::Interval,
            dns: Dns::default(),
            ring_buffer_kib: crate::sensor::DEFAULT_RING_BYTES >> 10,
            pin: true,
            pin_dir: None,
            audit_retention: AuditRetention::default(),
            service_domains: std::collections::BTreeMap::new(),
            metrics_listen: None,
            fleet: None,
            issuer: Issuer::default(),
        }
    }
}

impl Config {
    /// Reads `path`; a missing file at the default location means "all defaults", a
    /// missing file named explicitly is an error.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: locate(text, &e),
        })?;
        crate::outputs::config::check_unknown_keys(text, &config.sinks).map_err(|message| {
            ConfigError::Invalid {
                path: path.to_owned(),
                message,
            }
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Where the sensor pins its programs; `None` with `pin = false`.
    pub fn pin_path(&self) -> Option<PathBuf> {
        self.pin.then(|| {
            self.pin_dir
                .clone()
                .unwrap_or_else(|| crate::sensor::pins::default_pin_dir(&self.state_dir))
        })
    }

    /// The ring buffer's size in bytes.
    pub fn ring_bytes(&self) -> u32 {
        self.ring_buffer_kib.saturating_mul(1024)
    }

    fn validate(&self) -> Result<(), String> {
        crate::sensor::ring_bytes(u64::from(self.ring_buffer_kib) * 1024)
            .map_err(|e| format!("ring_buffer_kib: {} KiB is {e}", self.ring_buffer_kib))?;
        if let Some(dir) = &self.pin_dir
            && !dir.is_absolute()
        {
            return Err(format!(
                "pin_dir: {} must be an absolute path",
                dir.display()
            ));
        }
        for (name, p) in [
            ("state_dir", &self.state_dir),
            ("socket", &self.socket),
            ("agents_dir", &self.agents_dir),
            ("alerts_file", &self.alerts_file),
        ] {
            if !p.is_absolute() {
                return Err(format!("{name}: {} must be an absolute path", p.display()));
            }
        }
        if let Err(e) = crate::identity::GlobList::new(&self.watch_cgroups) {
            return Err(format!("watch_cgroups: {e}"));
        }
        crate::detect::rules::ServiceDomains::with_overrides(&self.service_domains)?;
        if let Some(fleet) = &self.fleet {
            fleet.validate(self.fleet_key_file.is_some())?;
        }
        if self.retention.max_size_mb == 0 {
            return Err("retention.max_size_mb: must be at least 1".into());
        }
        if self.retention.max_age.is_zero() {
            return Err("retention.max_age: must be longer than 0s".into());
        }
        if self.audit_retention.max_size_mb == 0 {
            return Err("audit_retention.max_size_mb: must be at least 1".into());
        }
        if self.audit_retention.max_age.is_zero() {
            return Err("audit_retention.max_age: must be longer than 0s".into());
        }
        Ok(())
    }

    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join("agentid.db")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join("agentid.lock")
    }
}

/// `line N: message` from a toml error.
fn locate(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_owned();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

/// Durations written as `"90s"`, `"7d"`, `"1h 30m"`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/agentid/agentid.toml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(c.retention.max_age, Duration::from_hours(168));
        assert_eq!(c.store_path(), Path::new("/var/lib/agentid/agentid.db"));
    }

    #[test]
    fn the_issuer_is_off_by_default_and_read_when_on() {
        let off = parse("").unwrap().issuer;
        assert!(!off.enabled);
        assert_eq!(off.socket, Path::new(DEFAULT_WORKLOAD_SOCKET));
        assert_eq!(off.ttl, Duration::from_mins(5));
        let on = parse("[issuer]\nenabled = true\nttl = \"90s\"\naudiences = [\"db\"]\n")
            .unwrap()
            .issuer;
        assert!(on.enabled);
        assert_eq!(on.ttl, Duration::from_secs(90));
        assert_eq!(on.audiences, ["db"]);
        assert!(
            parse("[issuer]\nenable = true\n").is_err(),
            "a misspelt key"
        );
    }

    #[test]
    fn the_ring_buffer_size_is_a_power_of_two_of_pages() {
        assert_eq!(
            parse("").unwrap().ring_bytes(),
            crate::sensor::DEFAULT_RING_BYTES
        );
        assert_eq!(
            parse("ring_buffer_kib = 1024\n").unwrap().ring_bytes(),
            1 << 20
        );
        for bad in ["3000", "128", "2097152", "0"] {
            let e = parse(&format!("ring_buffer_kib = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("ring_buffer_kib"), "{bad}: {e}");
        }
    }

    #[test]
    fn values_are_read() {
        let c = parse(
            "state_dir = \"/tmp/x\"\nlog_format = \"json\"\n[retention]\nmax_age = \"2h\"\nmax_size_mb = 5\n",
        )
        .unwrap();
        assert_eq!(c.state_dir, Path::new("/tmp/x"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.retention.max_age, Duration::from_hours(2));
        assert_eq!(c.retention.max_size_mb, 5);
    }

    #[test]
    fn errors_name_the_file_line_and_problem() {
        let e = parse("state_dir = \"/x\"\nsokcet = \"/y\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/agentid/agentid.toml: line 2:"), "{e}");
        assert!(e.contains("sokcet"), "{e}");
        let e = parse("[retention]\nmax_age = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("soon"), "{e}");
        let e = parse("socket = \"relative.sock\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("socket: relative.sock must be an absolute path"),
            "{e}"
        );
        let e = parse("[retention]\nmax_size_mb = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_size_mb"), "{e}");
    }

    #[test]
    fn unknown_keys_in_a_sink_table_are_errors() {
        // `fromat` on line 4: a misspelt key must not be ignored behind `serde(flatten)`.
        let e = parse(
            "state_dir = \"/x\"\n[[sinks]]\ntype = \"file\"\nfromat = \"ecs\"\npath = \"/tmp/a.jsonl\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/etc/agentid/agentid.toml: line 4: sinks[0]: unknown key `fromat`"),
            "{e}"
        );
        // A common key misspelt in the second sink.
        let e = parse(
            "[[sinks]]\ntype = \"stdout\"\n\n[[sinks]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nmin_severty = \"high\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/etc/agentid/agentid.toml: line 7: sinks[1]: unknown key `min_severty` for a webhook sink"),
            "{e}"
        );
        // Inline-table form.
        let e = parse("sinks = [{ type = \"stdout\", incude_activity = true }]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1: sinks[0]: unknown key `incude_activity`"),
            "{e}"
        );
        // A key valid for one type is unknown for another; secrets never appear in the message.
        let e = parse(
            "[[sinks]]\ntype = \"splunk_hec\"\nurl = \"http://127.0.0.1:1\"\ntoken = \"s3cr3t-token\"\nhmac_secret = \"s3cr3t-hmac\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 5: sinks[0]: unknown key `hmac_secret`"),
            "{e}"
        );
        assert!(!e.contains("s3cr3t"), "{e}");
        // Every key, common and specific, of every type is still accepted.
        let c = parse(
            "[[sinks]]\nname = \"a\"\ntype = \"syslog\"\ntransport = \"tls\"\naddress = \"h:1\"\nformat = \"cef\"\nfacility = 1\napp_name = \"x\"\nhostname = \"h\"\nca_file = \"/c\"\nclient_cert = \"/c\"\nclient_key = \"/k\"\nserver_name = \"h\"\nocsf_ai_agent = true\nmin_severity = \"low\"\nrules = []\ninclude_activity = true\nspool_max_bytes = 1\nbatch_max = 1\nretry_initial_ms = 1\nretry_max_ms = 2\n",
        )
        .unwrap();
        assert_eq!(c.sinks.len(), 1);
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given() {
        assert_eq!(parse("").unwrap().metrics_listen, None);
        let c = parse("metrics_listen = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let e = parse("metrics_listen = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: invalid socket address"), "{e}");
    }

    #[test]
    fn fleet_needs_the_fleet_key() {
        let e = parse("[fleet]\nservers = [\"nats://127.0.0.1:4222\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[fleet] needs fleet_key_file"), "{e}");
        let c = parse(
            "fleet_key_file = \"/etc/agentid/fleet.key\"\n[fleet]\nservers = [\"nats://127.0.0.1:4222\"]\nhost = \"web-1\"\nheartbeat = \"2s\"\n",
        )
        .unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(f.host_name(), "web-1");
        assert_eq!(f.heartbeat, Duration::from_secs(2));
        assert_eq!(f.replicas, 1);
        let e =
            parse("fleet_key_file = \"/k\"\n[fleet]\nservers = [\"nats://h:1\"]\nhost = \"a.b\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("fleet.host"), "{e}");
        assert!(parse("").unwrap().fleet.is_none());
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        assert!(Config::load(Some(Path::new("/nonexistent/agentid.toml"))).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Any text: a config or an error naming the file (and a line when there is one).
        #[test]
        fn any_text_parses_or_names_the_file(text in "(state_dir|socket|\\[retention\\]|max_age|=|\"|/[a-z]*|\n|[ -~]){0,60}") {
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(e.to_string().starts_with("/etc/agentid/agentid.toml: "));
            }
        }
    }
}
