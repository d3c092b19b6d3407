//! Typed events: what the sensor hands to the rest of the pipeline.
use std::{net::IpAddr, time::SystemTime};

use serde::{Deserialize, Serialize, Serializer};

/// What happened. Serialised lowercase: the `kind` field of `agentid trace --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Exec,
    Fork,
    Exit,
    Connect,
    Send,
    /// A file opened by a process in a registered agent's cgroup.
    Open,
    /// A raw IP or packet socket created (traffic through it bypasses the connect hooks).
    Socket,
    /// An HTTP request head sent through a TLS library by a process in a registered
    /// agent's cgroup (read before encryption).
    Request,
}

impl EventKind {
    pub const ALL: [Self; 8] = [
        Self::Open,
        Self::Exec,
        Self::Fork,
        Self::Exit,
        Self::Connect,
        Self::Send,
        Self::Socket,
        Self::Request,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Fork => "fork",
            Self::Exit => "exit",
            Self::Connect => "connect",
            Self::Send => "send",
            Self::Open => "open",
            Self::Socket => "socket",
            Self::Request => "request",
        }
    }

    /// The ABI's kind number (index into the kernel drop counters).
    pub fn abi(self) -> u32 {
        use agentid_ebpf::kind;
        match self {
            Self::Exec => kind::EXEC,
            Self::Fork => kind::FORK,
            Self::Exit => kind::EXIT,
            Self::Connect => kind::CONNECT,
            Self::Send => kind::SEND,
            Self::Open => kind::OPEN,
            Self::Socket => kind::SOCKET,
            Self::Request => kind::REQUEST,
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transport protocol of a connect/send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// Any other IP protocol number (e.g. ICMP datagram sockets).
    #[serde(untagged)]
    Other(u16),
}

impl Protocol {
    pub fn from_ip_proto(proto: u16) -> Self {
        match proto {
            6 => Self::Tcp,
            17 => Self::Udp,
            other => Self::Other(other),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Udp => f.write_str("udp"),
            Self::Other(p) => write!(f, "ip-proto-{p}"),
        }
    }
}

/// The environment of an exec, captured in the kernel (`NAME=value` entries).
///
/// Secret material: it exists only so the credential stage can fingerprint it. It is never
/// serialised (`#[serde(skip)]` where it is held), its `Debug` shows only its size, and
/// its buffer is zeroed when dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretEnv(zeroize::Zeroizing<Vec<u8>>);

impl SecretEnv {
    pub fn new(bytes: &[u8]) -> Self {
        Self(zeroize::Zeroizing::new(bytes.to_vec()))
    }

    /// Takes a buffer that is already zeroed on drop (no copy left behind).
    pub fn from_zeroizing(bytes: zeroize::Zeroizing<Vec<u8>>) -> Self {
        Self(bytes)
    }

    /// Bytes held (sizes are not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `NAME=value` entries.
    pub fn entries(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == 0).filter(|e| !e.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Zeroes and drops the content once it has been fingerprinted.
    pub fn clear(&mut self) {
        self.0 = zeroize::Zeroizing::new(Vec::new());
    }
}

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretEnv(<{} bytes redacted>)", self.0.len())
    }
}

/// Why an exec's arguments or environment were not captured whole: one or more reasons,
/// serialised as a list of stable names (`"env-beyond-cap"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScanIncomplete(u8);

impl ScanIncomplete {
    /// More arguments than the capture cap.
    pub const ARGV_BEYOND_CAP: Self = Self(1);
    /// More environment than the capture cap.
    pub const ENV_BEYOND_CAP: Self = Self(2);
    /// Part of the argument memory could not be read.
    pub const ARGV_UNREADABLE: Self = Self(4);
    /// Part of the environment memory could not be read.
    pub const ENV_UNREADABLE: Self = Self(8);
    /// Captured parts never arrived (ring buffer full, or dropped by the reader's bound).
    pub const CHUNKS_LOST: Self = Self(16);
    /// The process was seeded from `/proc` and its `environ`/`cmdline` could not be read
    /// (it exited, or its memory is not readable).
    pub const PROC_UNREADABLE: Self = Self(32);

    const NAMES: [(Self, &'static str); 6] = [
        (Self::ARGV_BEYOND_CAP, "argv-beyond-cap"),
        (Self::ENV_BEYOND_CAP, "env-beyond-cap"),
        (Self::ARGV_UNREADABLE, "argv-unreadable"),
        (Self::ENV_UNREADABLE, "env-unreadable"),
        (Self::CHUNKS_LOST, "chunks-lost"),
        (Self::PROC_UNREADABLE, "proc-unreadable"),
    ];

    /// `a` with `b`'s reasons added.
    #[must_use]
    pub const fn with(self, b: Self) -> Self {
        Self(self.0 | b.0)
    }

    pub const fn contains(self, b: Self) -> bool {
        self.0 & b.0 == b.0
    }

    /// The reasons' stable names, in a fixed order.
    pub fn reasons(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .filter(move |(r, _)| self.contains(*r))
            .map(|(_, name)| name)
    }

    /// `Some` of the union of `reasons`, `None` when there are none.
    pub fn from_reasons(reasons: impl IntoIterator<Item = Self>) -> Option<Self> {
        let all = reasons.into_iter().fold(Self(0), Self::with);
        (all.0 != 0).then_some(all)
    }
}

impl std::fmt::Display for ScanIncomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.reasons().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(r)?;
        }
        Ok(())
    }
}

impl Serialize for ScanIncomplete {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.reasons())
    }
}

/// The address family of a raw or packet socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketFamily {
    Inet,
    Inet6,
    Packet,
    #[serde(untagged)]
    Other(u32),
}

impl SocketFamily {
    pub fn from_abi(family: u32) -> Self {
        match family {
            2 => Self::Inet,
            10 => Self::Inet6,
            17 => Self::Packet,
            other => Self::Other(other),
        }
    }
}

impl std::fmt::Display for SocketFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inet => f.write_str("inet"),
            Self::Inet6 => f.write_str("inet6"),
            Self::Packet => f.write_str("packet"),
            Self::Other(n) => write!(f, "family {n}"),
        }
    }
}

/// A file by what it is, not by a name: device (userspace `st_dev` form, as `stat`
/// reports it) and inode number. Every path that reaches the same file — a symlink, a hard
/// link, a bind mount, `/proc/PID/fd/N` — gives the same `FileId`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// From the kernel's `s_dev` (`major << 20 | minor`) and `i_ino`; `None` when the
    /// kernel could not read them (both 0).
    pub fn from_kernel(s_dev: u32, ino: u64) -> Option<Self> {
        if ino == 0 {
            return None;
        }
        let (major, minor) = (s_dev >> 20, s_dev & 0xf_ffff);
        Some(Self {
            dev: libc::makedev(major, minor),
            ino,
        })
    }

    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}
/// The library call that handed a request over (`tls_fn` in an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsFn {
    /// OpenSSL-family `SSL_write`.
    SslWrite,
    /// `SSL_write_ex` / `SSL_write_ex2`.
    SslWriteEx,
    /// `nghttp2_submit_request{,2}` (HTTP/2, before header compression).
    Nghttp2,
}

/// An HTTP request's header fields, as captured: `name: value` entries, NUL-separated.
///
/// Secret material (`Authorization` and friends), with the same rules as [`SecretEnv`]:
/// never serialised, `Debug` shows the size only, zeroed on drop, emptied by the credential
/// stage once fingerprinted. Only complete fields are held: a field the capture cut is
/// not here, so a cut secret is never fingerprinted as if it were the secret.
pub type SecretHeaders = SecretEnv;

/// Kind-specific fields, flattened into the event's JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Detail {
    Exec {
        filename: String,
        /// Every argument, up to the capture cap (`agentid_ebpf::EXEC_AREA_CAP` bytes).
        argv: Vec<String>,
        /// Not every argument was captured (beyond the cap, unreadable or lost on the
        /// way); `argv` holds the first ones.
        argv_truncated: bool,
        /// No argv was captured (the exec began before the probes attached).
        argv_missing: bool,
        /// Audit login uid: the human login session behind the process, when set.
        loginuid: Option<u32>,
        /// The environment (never serialised; emptied after fingerprinting).
        #[serde(skip)]
        env: SecretEnv,
        /// Set when part of the arguments or the environment could not be captured, so the
        /// credential scan did not see the whole exec; `None` when it saw everything.
        #[serde(skip_serializing_if = "Option::is_none")]
        scan_incomplete: Option<ScanIncomplete>,
    },
    /// `pid` is the new child, `ppid` the forking process.
    Fork {},
    Exit {
        /// Exit code when the process exited normally.
        exit_code: Option<i32>,
        /// Terminating signal when it was killed.
        signal: Option<u32>,
    },
    /// A file opened (kind open): the path as passed to `open`/`openat` (relative paths are
    /// relative to the process's working directory or `dfd`), and the file the kernel
    /// actually opened, whatever the path went through.
    Open {
        path: String,
        open_flags: u32,
        /// `None` when the kernel could not say (then only the path is known).
        #[serde(skip_serializing_if = "Option::is_none")]
        inode: Option<FileId>,
    },
    /// A `connect` (kind connect) or an unconnected `sendto`/`sendmsg` (kind send).
    Sock {
        dst_ip: IpAddr,
        dst_port: u16,
        protocol: Protocol,
        /// The names this cgroup's own DNS resolved to `dst_ip` (held for the TTL, at
        /// least `[dns] min_hold`, plus `grace`); empty when it resolved none.
        dst_names: Vec<String>,
    },
    /// An HTTP request sent through a TLS library (kind request).
    Request {
        method: String,
        /// `Host` (HTTP/1) or `:authority` (HTTP/2), port removed; `None` when absent.
        host: Option<String>,
        /// The request target with query values dropped (`/v1/x?key=&beta=`): they may
        /// hold secrets.
        path: String,
        /// `"1.1"`, `"1.0"` or `"2"`.
        http_version: String,
        tls_fn: TlsFn,
        /// Names of the header fields that carried a credential (lowercase), filled in by
        /// the credential stage.
        credential_headers: Vec<String>,
        /// The head went on in a later write than its request line: this event holds the
        /// fields of that later write (method, host and path are the request's).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        continued: bool,
        /// The header fields (never serialised; emptied after fingerprinting).
        #[serde(skip)]
        headers: SecretHeaders,
    },
    /// A raw IP (`SOCK_RAW`) or packet socket created.
    Socket {
        family: SocketFamily,
        /// `SOCK_RAW` (3) or, for packet sockets, `SOCK_DGRAM` (2).
        sock_type: u32,
        /// The protocol argument as passed (IP protocol number, or ethertype).
        protocol: u32,
    },
}

/// One decoded kernel event. Field names are the stable `--json` schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub kind: EventKind,
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// Kernel boot-time stamp in ns: monotonic, for ordering events.
    #[serde(skip)]
    pub ktime_ns: u64,
    /// Start time (ns since boot) of the process the event is about, when the kernel
    /// reported it (exec, fork: the child, exit). Names the process across pid reuse.
    #[serde(skip)]
    pub proc_start_ns: Option<u64>,
    pub pid: u32,
    pub ppid: Option<u32>,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// cgroup v2 path relative to the hierarchy root, filled in by the consumer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub comm: String,
    /// Refused by enforcement in the kernel (`enforce = true`): the connect or send failed
    /// with `EPERM`, or the exec'd image was killed before it ran.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub blocked: bool,
    #[serde(flatten)]
    pub detail: Detail,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_nanos(rfc3339_range(*t)))
}

/// `t` clamped to what RFC 3339 (and humantime) can write: 1970-01-01 to the end of
/// 9999. humantime's `Display` panics before the epoch and fails after 9999, and a failing
/// `Display` inside `to_string` is a panic: found by fuzzing the encoders.
pub fn rfc3339_range(t: SystemTime) -> SystemTime {
    // 9999-12-31T23:59:59.999999999Z
    const LAST: std::time::Duration = std::time::Duration::new(253_402_300_799, 999_999_999);
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Err(_) => SystemTime::UNIX_EPOCH,
        Ok(d) if d > LAST => SystemTime::UNIX_EPOCH + LAST,
        Ok(_) => t,
    }
}
