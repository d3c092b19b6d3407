//! The record ABI shared by agentid's kernel programs and its userspace.
//!
//! Every record in the ring buffer starts with one [`Header`]; `Header::kind` says which
//! record follows. All records are `#[repr(C)]`, sized to a multiple of 8 and laid out so
//! that no implicit padding exists (checked at compile time below): the kernel writes them
//! field by field into ring-buffer memory, and userspace decodes them from raw bytes, so
//! every bit pattern must be a valid value (integers and byte arrays only, no enums/bools).
#![no_std]

/// Length of a task's `comm`, as in the kernel.
pub const COMM_LEN: usize = 16;
/// Bytes of the exec'd path kept (NUL included); longer paths are flagged truncated.
pub const FILENAME_LEN: usize = 256;
/// Bytes of NUL-separated arguments carried in the [`ExecRecord`] itself; the rest of the
/// argument area follows in [`ExecChunkRecord`]s.
pub const ARGV_LEN: usize = 1024;
/// Bytes of NUL-separated `NAME=value` environment entries carried in the [`ExecRecord`]
/// itself; the rest follows in [`ExecChunkRecord`]s. The environment is where agents carry
/// their credentials; userspace fingerprints it and drops it.
pub const ENV_LEN: usize = 4096;
/// Bytes of each of an exec's two string areas (arguments, environment) captured in all:
/// the record's first part plus chunks. Beyond it the exec is flagged (`*_TRUNCATED`).
/// The kernel itself allows a quarter of the stack limit (2 MiB by default) for both, in
/// strings of at most 128 KiB; 256 KiB each covers any real environment (a busy
/// Kubernetes namespace's service variables are tens of KiB) at a bounded ring cost.
pub const EXEC_AREA_CAP: usize = 256 * 1024;
/// Data bytes per [`ExecChunkRecord`].
pub const CHUNK_LEN: usize = 16 * 1024;
/// Chunks per area at most: what covers `EXEC_AREA_CAP` past the smaller first part.
pub const MAX_CHUNKS: usize = (EXEC_AREA_CAP - ARGV_LEN).div_ceil(CHUNK_LEN);
/// Arguments an exec can carry within [`EXEC_AREA_CAP`] (each takes at least its NUL);
/// userspace never returns more.
pub const MAX_ARGS: usize = EXEC_AREA_CAP;

/// Name of the ring buffer map carrying every record.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array counting ring-buffer reservation failures, indexed by kind.
pub const DROPS_MAP: &str = "DROPS";
/// Name of the hash map of cgroup ids whose file opens are reported (userspace fills it
/// with the cgroups of registered agents: credential files are read there).
pub const OPEN_CGROUPS_MAP: &str = "OPEN_CGROUPS";
/// Name of the one-entry array holding the tgid of the daemon reading the ring buffer: its
/// own activity is dropped in the kernel. The daemon writes it at every start (the pinned
/// programs outlive the daemon that loaded them); the exit program clears it when that
/// process exits, so a pid reused while no daemon runs is never skipped.
pub const SELF_MAP: &str = "SELF";
/// Bytes of an opened path kept (NUL included).
pub const PATH_LEN: usize = 256;

/// Bytes of a DNS message kept in a [`DnsRecord`] (the rest is cut: an answer's first
/// 1 KiB holds its question and dozens of addresses).
pub const DNS_LEN: usize = 1024;

/// `DnsRecord::direction` values.
pub mod dns_dir {
    /// Sent by the watched socket (a query, or an answer it serves).
    pub const EGRESS: u32 = 0;
    /// Delivered to the watched socket (an answer, or a query it serves).
    pub const INGRESS: u32 = 1;
}

pub mod enforce;

/// Name of the load-time global holding [`Config`].
pub const CONFIG_GLOBAL: &str = "CONFIG";
/// Size of the ring buffer. 16 MiB holds ~200k connect records or ~12k exec records, so a
/// reader that stalls for a second under a heavy storm still loses nothing.
pub const RINGBUF_BYTES: u32 = 16 << 20;
/// While a CPU keeps producing records it asks for at most one reader wakeup per this
/// interval; the rest are submitted without one. The reader must therefore keep polling
/// at least this often for a while after each non-empty read (`Sensor::next_events`).
pub const WAKE_EVERY_NS: u64 = 5_000_000;

/// Record kinds (`Header::kind`). A plain `u32` on the wire so that garbage decodes to an
/// error instead of an invalid enum.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;
    pub const CONNECT: u32 = 4;
    pub const SEND: u32 = 5;
    pub const OPEN: u32 = 6;
    /// Part of an exec's argument or environment area past what its [`super::ExecRecord`]
    /// holds. Submitted before that exec record, so a reader has every chunk of an exec
    /// when its exec record arrives.
    pub const EXEC_CHUNK: u32 = 7;
    /// A raw IP or packet socket was created ([`super::SocketRecord`]).
    pub const SOCKET: u32 = 8;
    /// A DNS message to or from a socket of a watched cgroup ([`super::DnsRecord`]).
    pub const DNS: u32 = 9;
    /// The head of an HTTP request a watched process handed to its TLS library
    /// ([`super::RequestRecord`]).
    pub const REQUEST: u32 = 10;
    /// One past the highest kind: the length of the drop-counter array.
    pub const COUNT: u32 = 11;
}

/// `ExecRecord::flags` bits.
pub mod exec_flags {
    /// More than [`super::EXEC_AREA_CAP`] bytes of arguments (the rest is not seen).
    pub const ARGV_TRUNCATED: u32 = 1;
    /// The path did not fit in [`super::FILENAME_LEN`].
    pub const FILENAME_TRUNCATED: u32 = 2;
    /// The new image's argument memory could not be read (no argv in the record).
    pub const ARGV_MISSING: u32 = 4;
    /// More than [`super::EXEC_AREA_CAP`] bytes of environment (the rest is not seen).
    pub const ENV_TRUNCATED: u32 = 8;
    /// The environment's first part could not be read (no environment in the record).
    pub const ENV_MISSING: u32 = 16;
    /// A chunk of the argument area could not be read; no later argument chunk was sent.
    pub const ARGV_FAULT: u32 = 32;
    /// A chunk of the environment could not be read; no later environment chunk was sent.
    pub const ENV_FAULT: u32 = 64;
    /// The ring buffer had no room for a chunk (counted under `kind::EXEC_CHUNK`); no
    /// later chunk of that area was sent.
    pub const CHUNK_DROPPED: u32 = 128;
    /// The executable is outside the enforced agent's `tools`: the kernel sent the new
    /// image `SIGKILL` before it ran an instruction of its own.
    pub const BLOCKED: u32 = 256;
}

/// `SockRecord::flags` bits.
pub mod sock_flags {
    /// Outside the enforced agent's `egress`: the call failed with `EPERM`.
    pub const BLOCKED: u16 = 1;
}

/// `ExecChunkRecord::stream` values.
pub mod chunk_stream {
    pub const ARGV: u32 = 0;
    pub const ENV: u32 = 1;
}

/// Common header of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    pub reserved: u32,
    /// `bpf_ktime_get_boot_ns`: nanoseconds since boot, suspend included.
    pub ktime_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id of the task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// A successful exec (`sched_process_exec`): the new image's arguments and environment as
/// the kernel laid them out on its stack (`mm->arg_start..arg_end`, `env_start..env_end`).
/// This record holds the first [`ARGV_LEN`] / [`ENV_LEN`] bytes of each; the rest, up to
/// [`EXEC_AREA_CAP`], arrives in [`ExecChunkRecord`]s submitted just before this record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecRecord {
    pub header: Header,
    /// tgid of the real parent at exec time.
    pub ppid: u32,
    /// Number of arguments, as counted by the kernel (`linux_binprm::argc`).
    pub argc: u32,
    /// Valid bytes in `argv`: NUL-terminated strings back to back.
    pub argv_len: u32,
    /// Valid bytes in `filename`, without the NUL.
    pub filename_len: u32,
    pub flags: u32,
    /// Audit login uid (the human login session behind the task); `u32::MAX` when unset.
    pub loginuid: u32,
    /// Process start time (`task_struct::start_boottime`, ns since boot): with the pid it
    /// names the process uniquely across pid reuse, and matches `/proc/PID/stat` starttime.
    pub start_ns: u64,
    /// The new image's environment entry count (`linux_binprm::envc`).
    pub envc: u32,
    /// Valid bytes in `env`.
    pub env_len: u32,
    /// Bytes of the whole argument area and of the whole environment area (capped at
    /// `u32::MAX`): what `argv`/`env` plus the chunks should add up to, up to the cap.
    pub argv_total: u32,
    pub env_total: u32,
    pub filename: [u8; FILENAME_LEN],
    pub argv: [u8; ARGV_LEN],
    /// NUL-terminated `NAME=value` strings back to back. Secret material: userspace
    /// fingerprints it, then zeroes it; it is never stored or printed.
    pub env: [u8; ENV_LEN],
}

/// Bytes `offset..offset + len` of one string area of the exec of (`header.tgid`,
/// `start_ns`). Only `kind`, `ktime_ns`, `tgid` and `tid` of the header are filled (the
/// exec record carries the rest); the others are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecChunkRecord {
    pub header: Header,
    /// The exec'ing process's `start_boottime`, as in its [`ExecRecord`].
    pub start_ns: u64,
    /// [`chunk_stream::ARGV`] or [`chunk_stream::ENV`].
    pub stream: u32,
    /// Where `data` starts in the area.
    pub offset: u32,
    /// Valid bytes in `data`.
    pub len: u32,
    pub reserved: u32,
    /// Secret material when the stream is the environment: userspace wipes it after use.
    pub data: [u8; CHUNK_LEN],
}

/// A new process (not a thread) was forked.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkRecord {
    pub header: Header,
    pub parent_tgid: u32,
    pub child_tgid: u32,
    /// The child's `start_boottime` (ns since boot).
    pub child_start_ns: u64,
}

/// A whole process exited (its last thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    pub header: Header,
    /// The raw wait status (`task_struct::exit_code`): exit code `<< 8`, or the signal.
    pub status: u32,
    pub reserved: u32,
    /// The exiting process's `start_boottime` (ns since boot).
    pub start_ns: u64,
}

/// An outbound `connect` (kind CONNECT) or an unconnected `sendmsg`/`sendto` (kind SEND).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRecord {
    pub header: Header,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// IP protocol number: 6 TCP, 17 UDP.
    pub protocol: u16,
    /// Destination port, host byte order.
    pub port: u16,
    /// [`sock_flags`] bits.
    pub flags: u16,
    /// Destination address in network byte order; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
}

/// A raw IP socket (`SOCK_RAW` on `AF_INET`/`AF_INET6`) or a packet socket (`AF_PACKET`)
/// created: what is sent through it bypasses the cgroup connect/sendmsg hooks, so its
/// creation is what can be seen. Other families (netlink, unix) are not reported.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketRecord {
    pub header: Header,
    /// `AF_INET` (2), `AF_INET6` (10) or `AF_PACKET` (17).
    pub family: u32,
    /// `SOCK_RAW` (3), `SOCK_DGRAM` (2) for cooked packet sockets; flags masked off.
    pub sock_type: u32,
    /// The protocol argument (an IP protocol number, or an ethertype in network order).
    pub protocol: u32,
    pub reserved: u32,
}

/// A UDP datagram or the first bytes of a TCP segment from or to port 53, sent or received
/// by a socket of a watched cgroup (see [`OPEN_CGROUPS_MAP`]): the DNS the agents
/// themselves do. Written by the `cgroup_skb` programs, which see the packet, not the
/// task: only `kind`, `ktime_ns` and `cgroup_id` (the socket's cgroup) of the header are
/// filled, the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsRecord {
    pub header: Header,
    /// [`dns_dir::EGRESS`] or [`dns_dir::INGRESS`].
    pub direction: u32,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// 6 TCP (the payload starts with the 2-byte length prefix), 17 UDP.
    pub protocol: u16,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// Valid bytes in `payload`.
    pub len: u32,
    /// Bytes of payload the packet carried (more than `len` when cut at [`DNS_LEN`]).
    pub orig_len: u32,
    pub reserved: u32,
    /// Network byte order; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub payload: [u8; DNS_LEN],
}

/// A successful `open` or `openat` by a task in a watched cgroup (see [`OPEN_CGROUPS_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenRecord {
    pub header: Header,
    /// Open flags (`O_RDONLY`, `O_WRONLY`, ...).
    pub flags: u32,
    /// Valid bytes in `path`, without the NUL.
    pub path_len: u32,
    /// The directory fd the path is relative to (`AT_FDCWD` = -100), as passed.
    pub dfd: i32,
    /// Device of the file actually opened (`inode->i_sb->s_dev`, the kernel's
    /// `major << 20 | minor` form), 0 when it could not be read; with `ino` it names the
    /// file whatever path (symlink, hard link, bind mount, `/proc/PID/fd/N`) reached it.
    pub dev: u32,
    /// Inode number of the file actually opened (`inode->i_ino`), 0 when unreadable.
    pub ino: u64,
    pub path: [u8; PATH_LEN],
}

/// Bytes of an HTTP/1 request head copied from a TLS write (the request line and headers of
/// an SDK request are 0.6–1.5 KiB; a body beyond this is never copied).
pub const REQUEST_LEN: usize = 4096;
/// Header fields of an HTTP/2 request copied (`nghttp2_nv` entries), one slot each.
pub const H2_FIELDS: usize = 32;
/// Bytes of one HTTP/2 field slot in [`RequestRecord::data`]: a 4-byte length prefix
/// (name length `u8` capped, pad `u8`, value length `u16` capped, little endian), the name
/// at [`H2_NAME_AT`] and the value at [`H2_VALUE_AT`].
pub const H2_SLOT: usize = 256;
/// Name bytes kept per HTTP/2 field (longer names are cut; credential header names are short).
pub const H2_NAME_LEN: usize = 60;
pub const H2_NAME_AT: usize = 4;
/// Value bytes kept per HTTP/2 field: a longer value is flagged (its real length is in the
/// slot) and never fingerprinted, since a cut secret is not the secret.
pub const H2_VALUE_LEN: usize = 192;
pub const H2_VALUE_AT: usize = H2_SLOT - H2_VALUE_LEN;

/// `RequestRecord::source` values: which library function handed over the request. Also
/// the uprobe's attach cookie, which tells the program how to read the length argument.
pub mod request_source {
    /// OpenSSL-family `SSL_write(ssl, buf, int num)`.
    pub const SSL_WRITE: u32 = 1;
    /// `SSL_write_ex(ssl, buf, size_t num, ...)` / `SSL_write_ex2`.
    pub const SSL_WRITE_EX: u32 = 2;
    /// `nghttp2_submit_request{,2}(session, pri, nva, nvlen, ...)`: header fields before
    /// HPACK compression, in [`super::H2_SLOT`] slots.
    pub const NGHTTP2: u32 = 3;
    /// Or'ed into `SSL_WRITE`/`SSL_WRITE_EX`: a later write on a connection whose request
    /// head did not end with its write (`\r\n\r\n` not at the end), so the head may go
    /// on here: a header split across writes is still seen. At most
    /// [`super::CONTINUATION_WRITES`] follow one request line.
    pub const CONTINUATION: u32 = 0x100;
}

/// Writes captured after a request line whose write did not end the head.
pub const CONTINUATION_WRITES: u32 = 2;

/// An HTTP request's head leaving a process in a watched cgroup through its TLS library,
/// seen by an entry uprobe before encryption. For `SSL_write*`, `data` holds the first
/// `captured` bytes of a buffer that began with an HTTP/1.x request line; for nghttp2 it
/// holds `captured` header-field slots. Secret material (it carries `Authorization`):
/// userspace fingerprints the credentials, keeps names only, and wipes its copies.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RequestRecord {
    pub header: Header,
    /// A [`request_source`] value.
    pub source: u32,
    /// Bytes (`SSL_write*`) or fields (nghttp2) in `data`.
    pub captured: u32,
    /// The whole write's length, or the request's field count (nghttp2).
    pub total_len: u64,
    /// The connection's library handle (`SSL *` or `nghttp2_session *`): tells requests on
    /// one connection apart from another's within a process.
    pub conn: u64,
    pub data: [u8; H2_FIELDS * H2_SLOT],
}

/// Load-time configuration, written by userspace into the `CONFIG` global before load.
///
/// Kernel struct layouts differ between kernels and Rust has no CO-RE, so every offset
/// into a kernel type is resolved from `/sys/kernel/btf/vmlinux` at start and passed here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Seconds an address learned for enforcement is held past its TTL (`[dns] grace`).
    /// (Was the daemon's own tgid; that is in the [`SELF_MAP`] map now.)
    pub learn_grace_s: u32,
    /// 1 when `sched_process_exit` passes `group_dead` (6.x kernels); else the exit of
    /// the thread-group leader stands for the process exit.
    pub exit_has_group_dead: u32,
    pub task_pid_off: u32,
    pub task_tgid_off: u32,
    pub task_real_parent_off: u32,
    pub task_exit_code_off: u32,
    pub binprm_filename_off: u32,
    pub task_start_boottime_off: u32,
    /// 0 when the kernel has no `task_struct::loginuid` (built without audit).
    pub task_loginuid_off: u32,
    /// `linux_binprm::file`: the executable being run (its inode decides `tools`).
    pub binprm_file_off: u32,
    /// `task_struct::mm`, and where the new image's argument and environment strings lie
    /// in its memory (`mm_struct::{arg,env}_{start,end}`): read once each at exec.
    pub task_mm_off: u32,
    pub mm_arg_start_off: u32,
    pub mm_arg_end_off: u32,
    pub mm_env_start_off: u32,
    pub mm_env_end_off: u32,
    pub binprm_argc_off: u32,
    pub binprm_envc_off: u32,
    /// Seconds an address learned for enforcement is held at least (`[dns] min_hold`).
    pub learn_min_hold_s: u32,
    /// The file an open returned, by fd: `task_struct::files` → `files_struct::fdt`
    /// → `fdtable::{fd, max_fds}` → `file::f_inode` → `inode::{i_ino, i_sb}` →
    /// `super_block::s_dev`. 0 in `file_inode_off` disables the lookup.
    pub task_files_off: u32,
    pub files_fdt_off: u32,
    pub fdtable_fd_off: u32,
    pub fdtable_max_fds_off: u32,
    pub file_inode_off: u32,
    pub inode_ino_off: u32,
    pub inode_sb_off: u32,
    pub sb_dev_off: u32,
    /// A new cgroup's parent and hierarchy, at `cgroup_mkdir`: `cgroup::{self, root, kn}`
    /// → `cgroup_subsys_state::parent` (the parent's `self`) and
    /// `cgroup_root::hierarchy_id` (0: cgroup v2) and `kernfs_node::id` (the cgroup id).
    /// 0 in `cgroup_kn_off` disables inheritance.
    pub cgroup_self_off: u32,
    pub cgroup_root_off: u32,
    pub cgroup_kn_off: u32,
    pub css_parent_off: u32,
    pub root_hierarchy_id_off: u32,
    pub kn_id_off: u32,
    /// The directory an exec's file was opened in (`tools = ["DIR/*"]`):
    /// `file::f_path.dentry` → `dentry::{d_parent, d_inode}`, then as above from the
    /// inode. 0 in `file_dentry_off` disables it.
    pub file_dentry_off: u32,
    pub dentry_parent_off: u32,
    pub dentry_inode_off: u32,
}

impl Config {
    pub const ZERO: Self = Self {
        learn_grace_s: 0,
        exit_has_group_dead: 0,
        task_pid_off: 0,
        task_tgid_off: 0,
        task_real_parent_off: 0,
        task_exit_code_off: 0,
        binprm_filename_off: 0,
        task_start_boottime_off: 0,
        task_loginuid_off: 0,
        binprm_file_off: 0,
        task_mm_off: 0,
        mm_arg_start_off: 0,
        mm_arg_end_off: 0,
        mm_env_start_off: 0,
        mm_env_end_off: 0,
        binprm_argc_off: 0,
        binprm_envc_off: 0,
        learn_min_hold_s: 0,
        task_files_off: 0,
        files_fdt_off: 0,
        fdtable_fd_off: 0,
        fdtable_max_fds_off: 0,
        file_inode_off: 0,
        inode_ino_off: 0,
        inode_sb_off: 0,
        sb_dev_off: 0,
        cgroup_self_off: 0,
        cgroup_root_off: 0,
        cgroup_kn_off: 0,
        css_parent_off: 0,
        root_hierarchy_id_off: 0,
        kn_id_off: 0,
        file_dentry_off: 0,
        dentry_parent_off: 0,
        dentry_inode_off: 0,
    };
}

// The layout both sides rely on, checked at compile time: every field at its offset and no
// implicit padding (each size is the plain sum of its fields). The kernel writes records
// field by field and userspace reads them from raw bytes, so a drift here is a silent
// misread; these asserts make it a build failure instead.
const _: () = {
    use core::mem::offset_of;
    const H: usize = size_of::<Header>();

    assert!(offset_of!(Header, kind) == 0);
    assert!(offset_of!(Header, reserved) == 4);
    assert!(offset_of!(Header, ktime_ns) == 8);
    assert!(offset_of!(Header, tgid) == 16);
    assert!(offset_of!(Header, tid) == 20);
    assert!(offset_of!(Header, uid) == 24);
    assert!(offset_of!(Header, gid) == 28);
    assert!(offset_of!(Header, cgroup_id) == 32);
    assert!(offset_of!(Header, comm) == 40);
    assert!(H == 40 + COMM_LEN);

    assert!(offset_of!(ExecRecord, header) == 0);
    assert!(offset_of!(ExecRecord, ppid) == H);
    assert!(offset_of!(ExecRecord, argc) == H + 4);
    assert!(offset_of!(ExecRecord, argv_len) == H + 8);
    assert!(offset_of!(ExecRecord, filename_len) == H + 12);
    assert!(offset_of!(ExecRecord, flags) == H + 16);
    assert!(offset_of!(ExecRecord, loginuid) == H + 20);
    assert!(offset_of!(ExecRecord, start_ns) == H + 24);
    assert!(offset_of!(ExecRecord, envc) == H + 32);
    assert!(offset_of!(ExecRecord, env_len) == H + 36);
    assert!(offset_of!(ExecRecord, argv_total) == H + 40);
    assert!(offset_of!(ExecRecord, env_total) == H + 44);
    assert!(offset_of!(ExecRecord, filename) == H + 48);
    assert!(offset_of!(ExecRecord, argv) == H + 48 + FILENAME_LEN);
    assert!(offset_of!(ExecRecord, env) == H + 48 + FILENAME_LEN + ARGV_LEN);
    assert!(size_of::<ExecRecord>() == H + 48 + FILENAME_LEN + ARGV_LEN + ENV_LEN);

    assert!(offset_of!(ExecChunkRecord, header) == 0);
    assert!(offset_of!(ExecChunkRecord, start_ns) == H);
    assert!(offset_of!(ExecChunkRecord, stream) == H + 8);
    assert!(offset_of!(ExecChunkRecord, offset) == H + 12);
    assert!(offset_of!(ExecChunkRecord, len) == H + 16);
    assert!(offset_of!(ExecChunkRecord, reserved) == H + 20);
    assert!(offset_of!(ExecChunkRecord, data) == H + 24);
    assert!(size_of::<ExecChunkRecord>() == H + 24 + CHUNK_LEN);

    assert!(offset_of!(ForkRecord, header) == 0);
    assert!(offset_of!(ForkRecord, parent_tgid) == H);
    assert!(offset_of!(ForkRecord, child_tgid) == H + 4);
    assert!(offset_of!(ForkRecord, child_start_ns) == H + 8);
    assert!(size_of::<ForkRecord>() == H + 16);

    assert!(offset_of!(ExitRecord, header) == 0);
    assert!(offset_of!(ExitRecord, status) == H);
    assert!(offset_of!(ExitRecord, reserved) == H + 4);
    assert!(offset_of!(ExitRecord, start_ns) == H + 8);
    assert!(size_of::<ExitRecord>() == H + 16);

    assert!(offset_of!(SockRecord, header) == 0);
    assert!(offset_of!(SockRecord, family) == H);
    assert!(offset_of!(SockRecord, protocol) == H + 2);
    assert!(offset_of!(SockRecord, port) == H + 4);
    assert!(offset_of!(SockRecord, flags) == H + 6);
    assert!(offset_of!(SockRecord, addr) == H + 8);
    assert!(size_of::<SockRecord>() == H + 8 + 16);

    assert!(offset_of!(SocketRecord, header) == 0);
    assert!(offset_of!(SocketRecord, family) == H);
    assert!(offset_of!(SocketRecord, sock_type) == H + 4);
    assert!(offset_of!(SocketRecord, protocol) == H + 8);
    assert!(offset_of!(SocketRecord, reserved) == H + 12);
    assert!(size_of::<SocketRecord>() == H + 16);

    assert!(offset_of!(OpenRecord, header) == 0);
    assert!(offset_of!(OpenRecord, flags) == H);
    assert!(offset_of!(OpenRecord, path_len) == H + 4);
    assert!(offset_of!(OpenRecord, dfd) == H + 8);
    assert!(offset_of!(OpenRecord, dev) == H + 12);
    assert!(offset_of!(OpenRecord, ino) == H + 16);
    assert!(offset_of!(OpenRecord, path) == H + 24);
    assert!(size_of::<OpenRecord>() == H + 24 + PATH_LEN);

    assert!(offset_of!(DnsRecord, header) == 0);
    assert!(offset_of!(DnsRecord, direction) == H);
    assert!(offset_of!(DnsRecord, family) == H + 4);
    assert!(offset_of!(DnsRecord, protocol) == H + 6);
    assert!(offset_of!(DnsRecord, sport) == H + 8);
    assert!(offset_of!(DnsRecord, dport) == H + 10);
    assert!(offset_of!(DnsRecord, len) == H + 12);
    assert!(offset_of!(DnsRecord, orig_len) == H + 16);
    assert!(offset_of!(DnsRecord, reserved) == H + 20);
    assert!(offset_of!(DnsRecord, saddr) == H + 24);
    assert!(offset_of!(DnsRecord, daddr) == H + 40);
    assert!(offset_of!(DnsRecord, payload) == H + 56);
    assert!(size_of::<DnsRecord>() == H + 56 + DNS_LEN);
    assert!(size_of::<DnsRecord>().is_multiple_of(8) && DNS_LEN.is_power_of_two());

    assert!(offset_of!(RequestRecord, header) == 0);
    assert!(offset_of!(RequestRecord, source) == H);
    assert!(offset_of!(RequestRecord, captured) == H + 4);
    assert!(offset_of!(RequestRecord, total_len) == H + 8);
    assert!(offset_of!(RequestRecord, conn) == H + 16);
    assert!(offset_of!(RequestRecord, data) == H + 24);
    assert!(size_of::<RequestRecord>() == H + 24 + H2_FIELDS * H2_SLOT);
    assert!(size_of::<RequestRecord>().is_multiple_of(8));
    assert!(REQUEST_LEN.is_power_of_two() && REQUEST_LEN <= H2_FIELDS * H2_SLOT);
    assert!(H2_NAME_AT + H2_NAME_LEN <= H2_VALUE_AT && H2_VALUE_LEN < 1 << 16);
    assert!(H2_NAME_LEN < 64 && H2_VALUE_LEN < 256);

    assert!(offset_of!(Config, learn_grace_s) == 0);
    assert!(offset_of!(Config, exit_has_group_dead) == 4);
    assert!(offset_of!(Config, task_pid_off) == 8);
    assert!(offset_of!(Config, task_tgid_off) == 12);
    assert!(offset_of!(Config, task_real_parent_off) == 16);
    assert!(offset_of!(Config, task_exit_code_off) == 20);
    assert!(offset_of!(Config, binprm_filename_off) == 24);
    assert!(offset_of!(Config, task_start_boottime_off) == 28);
    assert!(offset_of!(Config, task_loginuid_off) == 32);
    assert!(offset_of!(Config, binprm_file_off) == 36);
    assert!(offset_of!(Config, task_mm_off) == 40);
    assert!(offset_of!(Config, mm_arg_start_off) == 44);
    assert!(offset_of!(Config, mm_arg_end_off) == 48);
    assert!(offset_of!(Config, mm_env_start_off) == 52);
    assert!(offset_of!(Config, mm_env_end_off) == 56);
    assert!(offset_of!(Config, binprm_argc_off) == 60);
    assert!(offset_of!(Config, binprm_envc_off) == 64);
    assert!(offset_of!(Config, learn_min_hold_s) == 68);
    assert!(offset_of!(Config, task_files_off) == 72);
    assert!(offset_of!(Config, files_fdt_off) == 76);
    assert!(offset_of!(Config, fdtable_fd_off) == 80);
    assert!(offset_of!(Config, fdtable_max_fds_off) == 84);
    assert!(offset_of!(Config, file_inode_off) == 88);
    assert!(offset_of!(Config, inode_ino_off) == 92);
    assert!(offset_of!(Config, inode_sb_off) == 96);
    assert!(offset_of!(Config, sb_dev_off) == 100);
    assert!(offset_of!(Config, dentry_inode_off) == 136);
    assert!(size_of::<Config>() == 35 * 4);

    // Ring-buffer records are 8-byte aligned; sizes that are multiples of 8 keep every
    // record's fields aligned in place.
    assert!(H.is_multiple_of(8) && size_of::<ExecRecord>().is_multiple_of(8));
    assert!(size_of::<ExecChunkRecord>().is_multiple_of(8));
    assert!(size_of::<SockRecord>().is_multiple_of(8) && size_of::<ForkRecord>().is_multiple_of(8));
    assert!(size_of::<ExitRecord>().is_multiple_of(8) && size_of::<OpenRecord>().is_multiple_of(8));
    // The chunk length is a power of two (the kernel bounds a read's size with a mask) and
    // every chunk offset fits the record's u32.
    assert!(CHUNK_LEN.is_power_of_two() && EXEC_AREA_CAP < u32::MAX as usize);
    assert!(ARGV_LEN <= ENV_LEN && ARGV_LEN + MAX_CHUNKS * CHUNK_LEN >= EXEC_AREA_CAP);
};

#[cfg(feature = "user")]
mod user {
    // Each record: repr(C), integers and byte arrays only, no padding (asserted above).
    // SAFETY: any bytes are a valid value, so aya may read it out of maps and globals.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Header {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExecRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExecChunkRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ForkRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExitRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OpenRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RequestRecord {}
    // SAFETY: as above (the enforcement map keys and values).
    unsafe impl aya::Pod for super::enforce::NetKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::enforce::AddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::enforce::NameKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::enforce::PortSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::enforce::ExeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::enforce::ExePath {}
}
