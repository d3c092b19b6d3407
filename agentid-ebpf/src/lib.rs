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
/// Bytes of NUL-separated arguments kept per exec.
pub const ARGV_LEN: usize = 1024;
/// Arguments kept per exec: the kernel sends what fits in [`ARGV_LEN`] bytes, userspace
/// keeps this many and flags the rest as truncated.
pub const MAX_ARGS: usize = 16;
/// Bytes of NUL-separated `NAME=value` environment entries kept per exec. The environment
/// is where agents carry their credentials; userspace fingerprints it and drops it.
pub const ENV_LEN: usize = 4096;

/// Name of the ring buffer map carrying every record.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array counting ring-buffer reservation failures, indexed by kind.
pub const DROPS_MAP: &str = "DROPS";
/// Name of the hash map of cgroup ids whose file opens are reported (userspace fills it
/// with the cgroups of registered agents: credential files are read there).
pub const OPEN_CGROUPS_MAP: &str = "OPEN_CGROUPS";
/// Bytes of an opened path kept (NUL included).
pub const PATH_LEN: usize = 256;

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
    /// One past the highest kind: the length of the drop-counter array.
    pub const COUNT: u32 = 7;
}

/// `ExecRecord::flags` bits.
pub mod exec_flags {
    /// The argument strings were longer than [`super::ARGV_LEN`] bytes: only their first
    /// `ARGV_LEN` bytes are in the record. (Userspace also flags more than
    /// [`super::MAX_ARGS`] arguments; the kernel does not count them.)
    pub const ARGV_TRUNCATED: u32 = 1;
    /// The path did not fit in [`super::FILENAME_LEN`].
    pub const FILENAME_TRUNCATED: u32 = 2;
    /// The new image's argument memory could not be read (no argv in the record).
    pub const ARGV_MISSING: u32 = 4;
    /// More than [`super::ENV_LEN`] bytes of environment (the rest is not seen).
    pub const ENV_TRUNCATED: u32 = 8;
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

/// A successful exec, recorded at `sched_process_exec`: the new image is in place, and its
/// argument and environment strings are read from its memory
/// (`mm->arg_start..arg_end`, `mm->env_start..env_end`) in one copy each. Nothing is
/// captured at `execve` entry, so a failed exec leaves no record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecRecord {
    pub header: Header,
    /// tgid of the real parent at exec time.
    pub ppid: u32,
    /// The new image's argument count (`linux_binprm::argc`), whether or not all of
    /// them fit in `argv`.
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
    pub filename: [u8; FILENAME_LEN],
    pub argv: [u8; ARGV_LEN],
    /// NUL-terminated `NAME=value` strings back to back. Secret material: userspace
    /// fingerprints it, then zeroes it; it is never stored or printed.
    pub env: [u8; ENV_LEN],
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
    pub reserved: u16,
    /// Destination address in network byte order; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
}

/// A successful `openat` by a task in a watched cgroup (see [`OPEN_CGROUPS_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenRecord {
    pub header: Header,
    /// `openat` flags (`O_RDONLY`, `O_WRONLY`, ...).
    pub flags: u32,
    /// Valid bytes in `path`, without the NUL.
    pub path_len: u32,
    /// The directory fd the path is relative to (`AT_FDCWD` = -100), as passed.
    pub dfd: i32,
    pub reserved: u32,
    pub path: [u8; PATH_LEN],
}

/// Load-time configuration, written by userspace into the `CONFIG` global before load.
///
/// Kernel struct layouts differ between kernels and Rust has no CO-RE, so every offset
/// into a kernel type is resolved from `/sys/kernel/btf/vmlinux` at start and passed here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The agentid process itself: its own activity is dropped in the kernel.
    pub self_tgid: u32,
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
    pub reserved: u32,
    /// `task_struct::mm`, and where the new image's argument and environment strings lie
    /// in its memory (`mm_struct::{arg,env}_{start,end}`): read once each at exec.
    pub task_mm_off: u32,
    pub mm_arg_start_off: u32,
    pub mm_arg_end_off: u32,
    pub mm_env_start_off: u32,
    pub mm_env_end_off: u32,
    pub binprm_argc_off: u32,
    pub binprm_envc_off: u32,
    pub reserved2: u32,
}

impl Config {
    pub const ZERO: Self = Self {
        self_tgid: 0,
        exit_has_group_dead: 0,
        task_pid_off: 0,
        task_tgid_off: 0,
        task_real_parent_off: 0,
        task_exit_code_off: 0,
        binprm_filename_off: 0,
        task_start_boottime_off: 0,
        task_loginuid_off: 0,
        reserved: 0,
        task_mm_off: 0,
        mm_arg_start_off: 0,
        mm_arg_end_off: 0,
        mm_env_start_off: 0,
        mm_env_end_off: 0,
        binprm_argc_off: 0,
        binprm_envc_off: 0,
        reserved2: 0,
    };
}

// No implicit padding: each size is the plain sum of its fields.
const _: () = {
    assert!(size_of::<Header>() == 4 + 4 + 8 + 4 * 4 + 8 + COMM_LEN);
    assert!(
        size_of::<ExecRecord>()
            == size_of::<Header>() + 8 * 4 + 8 + FILENAME_LEN + ARGV_LEN + ENV_LEN
    );
    assert!(size_of::<ForkRecord>() == size_of::<Header>() + 16);
    assert!(size_of::<ExitRecord>() == size_of::<Header>() + 16);
    assert!(size_of::<SockRecord>() == size_of::<Header>() + 8 + 16);
    assert!(size_of::<Config>() == 18 * 4);
    assert!(size_of::<OpenRecord>() == size_of::<Header>() + 16 + PATH_LEN);
    assert!(size_of::<Header>().is_multiple_of(8) && size_of::<ExecRecord>().is_multiple_of(8));
    assert!(size_of::<SockRecord>().is_multiple_of(8) && size_of::<ForkRecord>().is_multiple_of(8));
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), integers only, no padding (asserted above): any bytes are a valid value.
    unsafe impl aya::Pod for super::Config {}
}
