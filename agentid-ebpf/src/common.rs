//! Maps, the load-time config and the common header shared by every program.
use agentid_ebpf::{Config, Header, RINGBUF_BYTES, kind};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};

/// Written by userspace before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config::ZERO;

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::COUNT, 0);

/// The config as set at load time. Volatile so the compiler cannot fold the zero
/// initialiser into the code: the loader rewrites the value in `.rodata`.
#[inline(always)]
pub fn config() -> Config {
    // SAFETY: CONFIG is a valid static for the program's whole life.
    unsafe { core::ptr::read_volatile(&raw const CONFIG) }
}

/// `(tgid, tid)` of the current task.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// Counts a record that could not be reserved, so loss is visible, never silent.
#[inline(always)]
pub fn count_drop(kind: u32) {
    if let Some(counter) = DROPS.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *counter += 1 };
    }
}

/// Fills the header in place (no stack copy: records live in ring-buffer memory).
///
/// # Safety
/// `header` must point to writable memory of a reserved ring-buffer record.
#[inline(always)]
pub unsafe fn fill_header(header: *mut Header, kind: u32, tgid: u32, tid: u32) {
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: caller guarantees `header` is valid for writes.
    unsafe {
        (*header).kind = kind;
        (*header).reserved = 0;
        (*header).ktime_ns = bpf_ktime_get_boot_ns();
        (*header).tgid = tgid;
        (*header).tid = tid;
        (*header).uid = uid_gid as u32;
        (*header).gid = (uid_gid >> 32) as u32;
        (*header).cgroup_id = bpf_get_current_cgroup_id();
        (*header).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
}
