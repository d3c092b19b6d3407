//! The enforcement maps shared by the kernel programs and the daemon, and the DNS name
//! hashing both sides must compute alike.
//!
//! Each enforced agent has a *policy id* (a `u32` the daemon derives from its SPIFFE ID).
//! The kernel finds a task's policy by its tgid ([`TASKS_MAP`], inherited at fork and
//! cleared at exit, so it follows a process that leaves its cgroup), else by the task's
//! cgroup ([`CGROUPS_MAP`], which then tags the tgid). A policy missing from
//! [`POLICIES_MAP`] is not enforced: removing it there lifts enforcement at once.

/// `HashMap<u32 tgid, u32 policy>`.
pub const TASKS_MAP: &str = "ENF_TASKS";
/// `HashMap<u64 cgroup id, u32 policy>`: the enforced agents' cgroups.
pub const CGROUPS_MAP: &str = "ENF_CGROUPS";
/// `HashMap<u32 policy, u32 policy_flags>`: the enforced policies.
pub const POLICIES_MAP: &str = "ENF_POLICIES";
/// `HashMap<NetKey, PortSet>`: the single addresses of `egress` address rules, matched
/// exactly: one hash lookup, where the trie below walks nodes (most address rules are
/// single addresses, and a connect's cost is what enforcement adds to every call).
pub const HOSTS_MAP: &str = "ENF_HOSTS";
/// `LpmTrie<NetKey, PortSet>`: the networks (shorter prefixes) of `egress` address rules.
pub const NETS_MAP: &str = "ENF_NETS";
/// `HashMap<NameKey, PortSet>`: `egress` name patterns, by hash.
pub const NAMES_MAP: &str = "ENF_NAMES";
/// `LruHashMap<AddrKey, u64>`: addresses learned from DNS answers for allowed names,
/// with the boot-clock ns until which they are allowed.
pub const LEARNED_MAP: &str = "ENF_LEARNED";
/// `HashMap<ExeKey, u8>`: the executables `tools` allows, by device and inode.
pub const EXES_MAP: &str = "ENF_EXES";
/// `HashMap<[u8; 16], u8>`: the host's resolvers (IPv4 as `::ffff:a.b.c.d`), to which
/// enforced agents may send DNS queries for allowed names without an `egress` rule.
pub const RESOLVERS_MAP: &str = "ENF_RESOLVERS";
/// `HashMap<ExePath, u8>`: the literal paths `tools` allows. An exec by one of these
/// names is allowed whatever file is there now, as the daemon's rescan would decide, but
/// with no window after a replacement.
pub const EXE_PATHS_MAP: &str = "ENF_EXE_PATHS";

/// [`POLICIES_MAP`] values: which lists the policy restricts (an absent list allows all).
pub mod policy_flags {
    pub const EGRESS: u32 = 1;
    pub const TOOLS: u32 = 2;
    /// The policy has entries in [`super::HOSTS_MAP`]: without, the lookup is skipped.
    pub const HOSTS: u32 = 4;
    /// The policy has entries in [`super::NETS_MAP`]: without, the lookup is skipped.
    pub const NETS: u32 = 8;
}

/// `NameKey::kind`.
pub mod name_kind {
    /// `api.example.org`: the whole question name.
    pub const EXACT: u32 = 1;
    /// `*.example.org`: the name without its first label.
    pub const ONE_LABEL: u32 = 2;
    /// `**.example.org`: the name without one or more first labels.
    pub const ANY_DEPTH: u32 = 3;
}

/// Key of [`HOSTS_MAP`] and of [`NETS_MAP`] (there, the LPM data after the trie's
/// `prefix_len`: the first [`NET_KEY_FIXED_BITS`] bits are always matched whole, `addr`
/// by the rule's prefix). The ports are in the value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetKey {
    pub policy: u32,
    pub pad: u32,
    /// Network byte order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
}

/// Bits of a [`NetKey`] before its address.
pub const NET_KEY_FIXED_BITS: u32 = 64;

/// Key of [`LEARNED_MAP`]: an address and a port (0: any), matched exactly.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub policy: u32,
    pub port: u16,
    pub pad: u16,
    pub addr: [u8; 16],
}

/// Key of [`NAMES_MAP`]: a [`name_kind`] and the [`suffix_step`] hash of the name (exact)
/// or of the pattern's base (wildcards).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey {
    pub policy: u32,
    pub kind: u32,
    pub hash: u64,
}

/// Ports a rule allows, already merged by the daemon with those of every less specific
/// rule that matches the same names or addresses: the kernel uses the most specific
/// match only.
pub const MAX_PORTS: usize = 8;

/// Value of [`NAMES_MAP`], [`HOSTS_MAP`] and [`NETS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortSet {
    /// Valid entries in `ports`.
    pub count: u32,
    /// 1: any port.
    pub any: u32,
    pub ports: [u16; MAX_PORTS],
}

impl PortSet {
    /// Whether `port` is one of the set's.
    #[inline]
    pub fn allows(&self, port: u16) -> bool {
        if self.any != 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_PORTS {
            if i >= self.count as usize {
                return false;
            }
            if self.ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Key of [`EXES_MAP`]: the kernel's `s_dev` (`major << 20 | minor`) and inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExeKey {
    pub policy: u32,
    pub dev: u32,
    pub ino: u64,
}

/// Bytes of [`ExePath::path`]: longer tool paths are allowed by inode only.
pub const EXE_PATH_LEN: usize = 252;

/// Key of [`EXE_PATHS_MAP`]: the path as the exec passed it (`bprm->filename`),
/// NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExePath {
    pub policy: u32,
    pub path: [u8; EXE_PATH_LEN],
}

/// Labels of a question name the kernel hashes (deeper names are refused).
pub const MAX_LABELS: usize = 32;

pub const LABEL_SEED: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// One byte of a label into its hash (FNV-1a over the lowercased bytes, from
/// [`LABEL_SEED`]).
#[inline]
pub fn label_step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(PRIME)
}

/// A name's suffix hash, built from its last label towards its first: starting from 0,
/// each label's hash in turn, so the hash of `a.example.org` extends that of
/// `example.org` and the kernel gets every suffix's hash in one pass.
#[inline]
pub fn suffix_step(s: u64, label: u64) -> u64 {
    (s.rotate_left(23) ^ label).wrapping_mul(PRIME)
}

/// An IPv4 address as the maps hold it: `::ffff:a.b.c.d`.
#[inline]
pub const fn v4_mapped(ip: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip[0], ip[1], ip[2], ip[3],
    ]
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<NetKey>() == 24 && offset_of!(NetKey, addr) == 8);
    assert!(size_of::<AddrKey>() == 24 && offset_of!(AddrKey, addr) == 8);
    assert!(size_of::<NameKey>() == 16 && offset_of!(NameKey, hash) == 8);
    assert!(size_of::<PortSet>() == 8 + 2 * MAX_PORTS);
    assert!(size_of::<ExeKey>() == 16 && offset_of!(ExeKey, ino) == 8);
    assert!(size_of::<ExePath>() == 4 + EXE_PATH_LEN);
};
