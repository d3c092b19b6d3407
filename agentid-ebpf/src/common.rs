//! Maps, the load-time config and the common header shared by every program.
use agentid_ebpf::{
    Config, DnsRecord, ExecRecord, ExitRecord, ForkRecord, Header, OpenRecord, RINGBUF_BYTES,
    RequestRecord, SockRecord, SocketRecord, WAKE_EVERY_NS, kind,
};
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};

/// Written by userspace before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config::ZERO;

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

/// Boot-clock ns of the last ring-buffer wakeup each CPU asked for.
#[map(name = "LAST_WAKE")]
static LAST_WAKE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The daemon's tgid (see `agentid_ebpf::SELF_MAP`); 0: no daemon, nothing skipped.
#[map(name = "SELF")]
static SELF: Array<u32> = Array::with_max_entries(1, 0);

/// Whether `tgid` is the daemon itself, whose own activity is not reported.
#[inline(always)]
pub fn is_self(tgid: u32) -> bool {
    SELF.get(0).is_some_and(|me| *me == tgid && tgid != 0)
}

/// The daemon process exited (killed or stopped): nothing is skipped any more, so a
/// process that later gets the same pid is seen.
#[inline(always)]
pub fn forget_self() {
    if let Some(me) = SELF.get_ptr_mut(0) {
        // SAFETY: a valid map slot; a racing writer is a new daemon writing its own tgid,
        // which only happens once this one is gone.
        unsafe { *me = 0 };
    }
}

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

/// Submit flags for a record stamped `now_ns`: at most one wakeup of the reader per CPU
/// per [`WAKE_EVERY_NS`].
///
/// A wakeup per record costs the traced task an irq_work and, in a VM, an IPI exit to wake
/// the daemon on the other CPU: in a connect storm that was most of agentid's overhead.
/// Records submitted without a wakeup are still read within the daemon's poll interval,
/// because the daemon keeps polling on a timer for a while after each non-empty read (see
/// `Sensor::next_events`, which relies on this interval).
#[inline(always)]
pub fn wake_flags(now_ns: u64) -> u64 {
    if let Some(last) = LAST_WAKE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe {
            if now_ns.wrapping_sub(*last) < WAKE_EVERY_NS {
                return u64::from(BPF_RB_NO_WAKEUP);
            }
            *last = now_ns;
        }
    }
    // Default: the kernel wakes the reader only when it had caught up.
    0
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

/// A record the programs put in the ring buffer.
///
/// # Safety
/// Implementors are `#[repr(C)]` and start with a [`Header`] at offset 0.
pub unsafe trait Record: 'static {}
// Each: `#[repr(C)]` with `header: Header` as the first field (asserted in the ABI crate).
// SAFETY: starts with a Header, as `Record` requires.
unsafe impl Record for ExecRecord {}
// SAFETY: as above.
unsafe impl Record for ForkRecord {}
// SAFETY: as above.
unsafe impl Record for ExitRecord {}
// SAFETY: as above.
unsafe impl Record for SockRecord {}
// SAFETY: as above.
unsafe impl Record for OpenRecord {}
// SAFETY: as above.
unsafe impl Record for SocketRecord {}
// SAFETY: as above.
unsafe impl Record for DnsRecord {}
// SAFETY: as above.
unsafe impl Record for RequestRecord {}

/// The reserve / fill / submit sequence every probe shares: reserves a `T` in the ring
/// buffer, fills its header, lets `fill` write the rest in place (no stack copy: records
/// are larger than the BPF stack), and submits it with at most one reader wakeup per CPU
/// per [`WAKE_EVERY_NS`]. A full ring buffer is counted under `kind`, never silent.
/// Returns whether the record was sent.
#[inline(always)]
pub fn emit<T: Record>(kind: u32, tgid: u32, tid: u32, fill: impl FnOnce(*mut T)) -> bool {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count_drop(kind);
        return false;
    };
    let rec = entry.as_mut_ptr();
    let header = rec.cast::<Header>();
    // SAFETY: `rec` is a reserved record of `T`, which starts with a Header (`Record`).
    unsafe { fill_header(header, kind, tgid, tid) };
    fill(rec);
    // SAFETY: as above; the header was filled just now.
    let flags = wake_flags(unsafe { (*header).ktime_ns });
    entry.submit(flags);
    true
}

/// A u32 field of a kernel struct, 0 when unreadable.
#[inline(always)]
pub fn read_u32(base: usize, off: u32) -> u32 {
    // SAFETY: kernel memory read through the checked helper.
    unsafe { bpf_probe_read_kernel((base + off as usize) as *const u32) }.unwrap_or(0)
}

/// A u64 field of a kernel struct, 0 when unreadable.
#[inline(always)]
pub fn read_u64(base: usize, off: u32) -> u64 {
    // SAFETY: kernel memory read through the checked helper.
    unsafe { bpf_probe_read_kernel((base + off as usize) as *const u64) }.unwrap_or(0)
}

/// An inode's device (the kernel's `s_dev`) and number; zeros when unreadable.
#[inline(always)]
pub fn dev_ino(cfg: &agentid_ebpf::Config, inode: usize) -> (u32, u64) {
    if inode == 0 {
        return (0, 0);
    }
    let sb = read_u64(inode, cfg.inode_sb_off) as usize;
    let dev = if sb == 0 {
        0
    } else {
        read_u32(sb, cfg.sb_dev_off)
    };
    (dev, read_u64(inode, cfg.inode_ino_off))
}
