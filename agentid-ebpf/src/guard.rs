//! Enforcement in the kernel, for agents registered with `enforce = true` (see
//! `agentid_ebpf::enforce` for the maps and how a task finds its policy).
//!
//! - connect/sendmsg outside `egress` fail with `EPERM` (`net.rs` asks [`egress_allowed`]);
//! - a DNS query from an enforced cgroup for a name outside `egress` is dropped, and the
//!   answers its resolvers send for allowed names teach the kernel their addresses before
//!   the answer reaches the socket (`dns.rs` calls [`dns_query_allowed`] and
//!   [`learn_answer`]): a client that connects right after resolving is never early;
//! - an exec outside `tools` gets `SIGKILL` before its first instruction (`process.rs`
//!   asks [`exe_allowed`]);
//! - a cgroup v2 created inside an enforced cgroup is enforced with its parent's policy
//!   from its creation ([`cgroup_mkdir`]), before any process can enter it.
use agentid_ebpf::enforce::{
    AddrKey, EXE_PATH_LEN, ExeKey, ExePath, LABEL_SEED, MAX_LABELS, MAX_PORTS, NET_KEY_FIXED_BITS,
    NameKey, NetKey, PortSet, label_step, name_kind, policy_flags, suffix_step, v4_mapped,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        generated::bpf_probe_read_kernel_str,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::RawTracePointContext,
};

use crate::common::config;

#[map(name = "ENF_TASKS")]
static ENF_TASKS: HashMap<u32, u32> = HashMap::with_max_entries(65536, 0);
#[map(name = "ENF_CGROUPS")]
static ENF_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);
#[map(name = "ENF_POLICIES")]
static ENF_POLICIES: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);
#[map(name = "ENF_HOSTS")]
static ENF_HOSTS: HashMap<NetKey, PortSet> = HashMap::with_max_entries(16384, 0);
#[map(name = "ENF_NETS")]
static ENF_NETS: LpmTrie<NetKey, PortSet> = LpmTrie::with_max_entries(16384, 0);
#[map(name = "ENF_NAMES")]
static ENF_NAMES: HashMap<NameKey, PortSet> = HashMap::with_max_entries(16384, 0);
#[map(name = "ENF_LEARNED")]
static ENF_LEARNED: LruHashMap<AddrKey, u64> = LruHashMap::with_max_entries(65536, 0);
#[map(name = "ENF_EXES")]
static ENF_EXES: HashMap<ExeKey, u8> = HashMap::with_max_entries(16384, 0);
#[map(name = "ENF_RESOLVERS")]
static ENF_RESOLVERS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(64, 0);
#[map(name = "ENF_EXE_PATHS")]
static ENF_EXE_PATHS: HashMap<ExePath, u8> = HashMap::with_max_entries(4096, 0);
/// The [`ExePath`] key of the exec being decided (too large for the stack).
#[map(name = "ENF_EXE_KEY")]
static ENF_EXE_KEY: PerCpuArray<ExePath> = PerCpuArray::with_max_entries(1, 0);

/// Bytes of a DNS message parsed (a question name is at most 255 bytes; the answers
/// past this are not learned).
pub const MSG_LEN: usize = 512;
/// DNS messages are parsed from here, not the stack (too small for them).
#[map(name = "ENF_SCRATCH")]
static ENF_SCRATCH: PerCpuArray<[u8; MSG_LEN]> = PerCpuArray::with_max_entries(1, 0);
/// The parser's state, kept in memory rather than registers: read back from a map
/// value every iteration, the loop-carried values are unknown to the verifier, so the
/// paths through one iteration converge at the next instead of multiplying (a byte loop
/// that branches on constants would not verify).
#[repr(C)]
struct Parse {
    labels: [u64; MAX_LABELS],
    hash: u64,
    suffix: u64,
    at: u64,
    /// The message's length: compared from memory, so a comparison on one path does
    /// not narrow it apart from another's.
    len: u64,
    left: u32,
    count: u32,
    end: u32,
    found: u32,
    ports: PortSet,
}

#[map(name = "ENF_PARSE")]
static ENF_PARSE: PerCpuArray<Parse> = PerCpuArray::with_max_entries(1, 0);

const DNS_PORT: u16 = 53;
const UDP: u16 = 17;
/// Answer records looked at per message.
const MAX_ANSWERS: usize = 16;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// The enforced policy of the current task and its policy flags, if any. A task found
/// by its cgroup is tagged by tgid, so it stays enforced wherever it moves.
#[inline(always)]
pub fn task_policy(tgid: u32) -> Option<(u32, u32)> {
    // SAFETY: map lookups of plain keys.
    let policy = match unsafe { ENF_TASKS.get(&tgid) } {
        Some(p) => *p,
        None => {
            // SAFETY: helper without preconditions.
            let cgroup = unsafe { bpf_get_current_cgroup_id() };
            // SAFETY: as above.
            let p = *unsafe { ENF_CGROUPS.get(&cgroup) }?;
            let _ = ENF_TASKS.insert(&tgid, &p, 0);
            p
        }
    };
    // SAFETY: as above.
    let flags = *unsafe { ENF_POLICIES.get(&policy) }?;
    Some((policy, flags))
}

/// A forked process inherits its parent's enforcement.
#[inline(always)]
pub fn inherit(parent_tgid: u32, child_tgid: u32) {
    if let Some((policy, _)) = task_policy(parent_tgid) {
        let _ = ENF_TASKS.insert(&child_tgid, &policy, 0);
    }
}

/// A process exited: its tgid may be reused by anyone.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = ENF_TASKS.remove(&tgid);
}

/// Whether the current task, about to run the executable `(dev, ino)` it named
/// `filename` (a kernel string), opened in directory `dir` (dev, ino), may run it: the
/// file is one `tools` resolved to, its directory is the `DIR` of a `DIR/*` rule, or the
/// name is one of its literal paths. The last two hold whatever file is there now: a
/// replaced or new tool runs at once, where the daemon's rescan would lag.
#[inline(always)]
pub fn exe_allowed(tgid: u32, (dev, ino): (u32, u64), dir: (u32, u64), filename: u64) -> bool {
    let Some((policy, flags)) = task_policy(tgid) else {
        return true;
    };
    if flags & policy_flags::TOOLS == 0 {
        return true;
    }
    let key = ExeKey { policy, dev, ino };
    // SAFETY: map lookup of a plain key.
    if unsafe { ENF_EXES.get(&key) }.is_some() {
        return true;
    }
    // A `DIR/*` rule: the directory is in the same map (a directory is never run itself).
    let key = ExeKey {
        policy,
        dev: dir.0,
        ino: dir.1,
    };
    // SAFETY: map lookup of a plain key.
    if dir.1 != 0 && unsafe { ENF_EXES.get(&key) }.is_some() {
        return true;
    }
    let Some(k) = ENF_EXE_KEY.get_ptr_mut(0) else {
        return false;
    };
    if filename == 0 {
        return false;
    }
    // SAFETY: `k` is this CPU's slot, valid for the whole `ExePath`; the name is kernel
    // memory read through the checked helper, at most `EXE_PATH_LEN` bytes with its NUL.
    unsafe {
        core::ptr::write_bytes(k, 0, 1);
        (*k).policy = policy;
        let n = bpf_probe_read_kernel_str(
            (*k).path.as_mut_ptr().cast(),
            EXE_PATH_LEN as u32,
            filename as *const _,
        );
        // A name that filled the buffer may be longer: the daemon never lists those.
        if n <= 1 || n as usize >= EXE_PATH_LEN {
            return false;
        }
        ENF_EXE_PATHS.get(&*k).is_some()
    }
}

/// `cgroup_mkdir(struct cgroup *cgrp, const char *path)`, run under `cgroup_mutex`, which
/// a move into the new cgroup also takes: a cgroup v2 made inside an enforced cgroup
/// gets its parent's policy before any process can be in it. The daemon's walk keeps
/// it (a cgroup below an enforced one stays enforced), so a new cgroup never waits for
/// the walk, whoever made it.
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    if cfg.cgroup_kn_off == 0 {
        return 0;
    }
    let cgrp: u64 = ctx.arg(0);
    let read = |base: u64, off: u32| -> u64 {
        if base == 0 {
            return 0;
        }
        // SAFETY: kernel memory read through the checked helper.
        unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const u64) }.unwrap_or(0)
    };
    let root = read(cgrp, cfg.cgroup_root_off);
    if root == 0 {
        return 0;
    }
    // SAFETY: as above; v1 hierarchies number their cgroups apart from v2's.
    let hierarchy = unsafe {
        bpf_probe_read_kernel((root + u64::from(cfg.root_hierarchy_id_off)) as *const i32)
    }
    .unwrap_or(-1);
    if hierarchy != 0 {
        return 0;
    }
    let parent_css = read(cgrp + u64::from(cfg.cgroup_self_off), cfg.css_parent_off);
    if parent_css == 0 {
        return 0;
    }
    // The parent's `self` is embedded in the parent cgroup.
    let parent = parent_css - u64::from(cfg.cgroup_self_off);
    let parent_id = read(read(parent, cfg.cgroup_kn_off), cfg.kn_id_off);
    let id = read(read(cgrp, cfg.cgroup_kn_off), cfg.kn_id_off);
    if parent_id == 0 || id == 0 {
        return 0;
    }
    // SAFETY: map lookup of a plain key.
    if let Some(policy) = unsafe { ENF_CGROUPS.get(&parent_id) } {
        let policy = *policy;
        let _ = ENF_CGROUPS.insert(&id, &policy, 0);
    }
    0
}

/// Whether a connect or unconnected send to `addr:port` (`addr` IPv4-mapped for v4) by
/// the current task is allowed.
#[inline(always)]
pub fn egress_allowed(tgid: u32, addr: &[u8; 16], port: u16, protocol: u16) -> bool {
    let Some((policy, flags)) = task_policy(tgid) else {
        return true;
    };
    if flags & policy_flags::EGRESS == 0 {
        return true;
    }
    // UDP DNS to the host's resolvers from the agent's own cgroup: the packet programs
    // check each query's name there. From anywhere else (a process that left its
    // cgroup) or over TCP they cannot, so only an `egress` rule allows it.
    // SAFETY: map lookups of plain keys; helper without preconditions.
    if port == DNS_PORT
        && protocol == UDP
        && unsafe { ENF_RESOLVERS.get(addr) }.is_some()
        && unsafe { ENF_CGROUPS.get(&bpf_get_current_cgroup_id()) }.is_some()
    {
        return true;
    }
    // The address rules: the single address if the policy has any, else (or if it is
    // not one) the most specific network. Either value holds the ports of every rule
    // that covers it, so one match decides.
    let net = NetKey {
        policy,
        pad: 0,
        addr: *addr,
    };
    let host = if flags & policy_flags::HOSTS == 0 {
        None
    } else {
        // SAFETY: map lookup of a plain key.
        unsafe { ENF_HOSTS.get(&net) }
    };
    let ports = match host {
        Some(p) => Some(p),
        None if flags & policy_flags::NETS != 0 => {
            ENF_NETS.get(&Key::new(NET_KEY_FIXED_BITS + 128, net))
        }
        None => None,
    };
    if ports.is_some_and(|p| p.allows(port)) {
        return true;
    }
    for p in [port, 0] {
        let learned = AddrKey {
            policy,
            port: p,
            pad: 0,
            addr: *addr,
        };
        // SAFETY: map lookup of a plain key.
        if let Some(until) = unsafe { ENF_LEARNED.get(&learned) } {
            // SAFETY: helper without preconditions.
            if unsafe { bpf_ktime_get_boot_ns() } < *until {
                return true;
            }
        }
    }
    false
}

/// The enforced policy of a packet's socket cgroup (packet programs see no task).
#[inline(always)]
pub fn cgroup_policy(cgroup: u64) -> Option<u32> {
    // SAFETY: map lookups of plain keys.
    let policy = *unsafe { ENF_CGROUPS.get(&cgroup) }?;
    // SAFETY: as above.
    let flags = *unsafe { ENF_POLICIES.get(&policy) }?;
    (flags & policy_flags::EGRESS != 0).then_some(policy)
}

/// Whether an address is one of the host's resolvers.
#[inline(always)]
pub fn is_resolver(addr: &[u8; 16]) -> bool {
    // SAFETY: map lookup of a plain key.
    unsafe { ENF_RESOLVERS.get(addr) }.is_some()
}

/// The per-CPU buffer DNS messages are parsed in.
#[inline(always)]
pub fn scratch() -> Option<*mut [u8; MSG_LEN]> {
    ENF_SCRATCH.get_ptr_mut(0)
}

#[inline(always)]
fn byte(msg: &[u8; MSG_LEN], i: usize) -> u8 {
    msg[i & (MSG_LEN - 1)]
}

#[inline(always)]
fn be16(msg: &[u8; MSG_LEN], i: usize) -> u16 {
    (u16::from(byte(msg, i)) << 8) | u16::from(byte(msg, i + 1))
}

macro_rules! get {
    ($st:ident . $f:ident) => {
        // SAFETY: `$st` is the valid per-CPU parse state.
        unsafe { core::ptr::read_volatile(&raw const (*$st).$f) }
    };
}
macro_rules! set {
    ($st:ident . $f:ident = $v:expr) => {{
        let v = $v;
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&raw mut (*$st).$f, v) }
    }};
}

/// Whether `policy` allows the question name of `msg` (the first `len` bytes of a DNS
/// message): then the parse state holds the name's ports and where the question ends.
#[inline(always)]
fn question(st: *mut Parse, policy: u32, msg: &[u8; MSG_LEN], len: usize) -> bool {
    if len < 12 || be16(msg, 4) != 1 {
        return false;
    }
    set!(st.len = len as u64);
    // Label hashes, first label first, from one pass over the name's bytes.
    set!(st.left = 0);
    set!(st.count = 0);
    set!(st.end = 0);
    set!(st.hash = LABEL_SEED);
    for i in 0..256usize {
        let at = 12 + i;
        if at as u64 >= get!(st.len) {
            return false;
        }
        let b = byte(msg, at);
        let left = get!(st.left);
        if left == 0 {
            if i > 0 {
                let count = get!(st.count) as usize;
                if count >= MAX_LABELS {
                    return false;
                }
                let h = get!(st.hash);
                // SAFETY: the parse state; the index is masked into the array.
                unsafe { (*st).labels[count & (MAX_LABELS - 1)] = h };
                set!(st.count = count as u32 + 1);
            }
            if b == 0 {
                set!(st.end = at as u32 + 1);
                break;
            }
            // A pointer or a label over 63 bytes: not a question name.
            if b > 63 {
                return false;
            }
            set!(st.left = u32::from(b));
            set!(st.hash = LABEL_SEED);
        } else {
            set!(st.hash = label_step(get!(st.hash), b));
            set!(st.left = left - 1);
        }
    }
    if get!(st.end) == 0 || get!(st.count) == 0 {
        return false;
    }
    // Suffixes from the shortest to the whole name: the last match is the most specific,
    // and the daemon merged into it the ports of the less specific ones.
    set!(st.found = 0);
    set!(st.suffix = 0);
    for k in 0..MAX_LABELS {
        let count = get!(st.count) as usize;
        if k >= count {
            break;
        }
        let j = count - 1 - k;
        // SAFETY: the parse state; the index is masked into the array.
        let label = unsafe { (*st).labels[j & (MAX_LABELS - 1)] };
        let s = suffix_step(get!(st.suffix), label);
        set!(st.suffix = s);
        let kinds = [
            if j >= 1 { name_kind::ANY_DEPTH } else { 0 },
            if j == 1 { name_kind::ONE_LABEL } else { 0 },
            if j == 0 { name_kind::EXACT } else { 0 },
        ];
        for kind in kinds {
            if kind == 0 {
                continue;
            }
            let key = NameKey {
                policy,
                kind,
                hash: s,
            };
            // SAFETY: map lookup of a plain key.
            if let Some(p) = unsafe { ENF_NAMES.get(&key) } {
                set!(st.ports = *p);
                set!(st.found = 1);
            }
        }
    }
    get!(st.found) != 0
}

/// Whether a DNS query in `msg` asks for a name `policy` allows.
#[inline(always)]
pub fn dns_query_allowed(policy: u32, msg: &[u8; MSG_LEN], len: usize) -> bool {
    let Some(st) = ENF_PARSE.get_ptr_mut(0) else {
        return false;
    };
    question(st, policy, msg, len)
}

/// Learns the A/AAAA addresses of an answer from a resolver whose question name `policy`
/// allows, on that name's ports, for the answer's TTL (at least `min_hold`) plus `grace`.
/// CNAME records are skipped: every address in an answer to an allowed question belongs
/// to that name.
#[inline(always)]
pub fn learn_answer(policy: u32, msg: &[u8; MSG_LEN], len: usize) {
    // A response (QR set), no error.
    if len < 12 || byte(msg, 2) & 0x80 == 0 || byte(msg, 3) & 0x0f != 0 {
        return;
    }
    let Some(st) = ENF_PARSE.get_ptr_mut(0) else {
        return;
    };
    if !question(st, policy, msg, len) {
        return;
    }
    set!(st.at = u64::from(get!(st.end)) + 4);
    let answers = usize::from(be16(msg, 6));
    let cfg = config();
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    for n in 0..MAX_ANSWERS {
        if n >= answers {
            break;
        }
        // The owner name: labels up to a zero byte or a compression pointer.
        for _ in 0..64 {
            let at = get!(st.at) as usize;
            if at as u64 >= get!(st.len) {
                return;
            }
            let b = byte(msg, at);
            if b & 0xc0 == 0xc0 {
                set!(st.at = at as u64 + 2);
                break;
            }
            if b == 0 {
                set!(st.at = at as u64 + 1);
                break;
            }
            set!(st.at = (at + usize::from(b) + 1) as u64);
        }
        let at = get!(st.at) as usize;
        let len = get!(st.len) as usize;
        if at + 10 > len {
            return;
        }
        let rtype = be16(msg, at);
        let ttl = (u32::from(be16(msg, at + 4)) << 16) | u32::from(be16(msg, at + 6));
        let rdlen = usize::from(be16(msg, at + 8));
        let data = at + 10;
        if data + rdlen > len {
            return;
        }
        set!(st.at = (data + rdlen) as u64);
        let hold = if ttl > cfg.learn_min_hold_s {
            ttl
        } else {
            cfg.learn_min_hold_s
        };
        let until = now + (u64::from(hold) + u64::from(cfg.learn_grace_s)) * 1_000_000_000;
        if rtype == TYPE_A && rdlen == 4 {
            let addr = v4_mapped([
                byte(msg, data),
                byte(msg, data + 1),
                byte(msg, data + 2),
                byte(msg, data + 3),
            ]);
            learn(st, policy, addr, until);
        } else if rtype == TYPE_AAAA && rdlen == 16 {
            let mut addr = [0u8; 16];
            for (i, slot) in addr.iter_mut().enumerate() {
                *slot = byte(msg, data + i);
            }
            learn(st, policy, addr, until);
        }
    }
}

#[inline(always)]
fn learn(st: *mut Parse, policy: u32, addr: [u8; 16], until: u64) {
    let ports = get!(st.ports);
    let mut key = AddrKey {
        policy,
        port: 0,
        pad: 0,
        addr,
    };
    if ports.any != 0 {
        let _ = ENF_LEARNED.insert(&key, &until, 0);
    }
    for i in 0..MAX_PORTS {
        if i >= ports.count as usize {
            break;
        }
        key.port = ports.ports[i];
        let _ = ENF_LEARNED.insert(&key, &until, 0);
    }
}
