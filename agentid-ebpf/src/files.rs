//! File opens by tasks in watched cgroups: where agents read their credential files.
//!
//! Only cgroups userspace put in `OPEN_CGROUPS` (those of registered agents) are reported:
//! every open on a host is far too many records, an agent's are few.
use agentid_ebpf::{OpenRecord, PATH_LEN, kind};
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, generated::bpf_probe_read_user_str},
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};

use crate::common::{config, current_ids, emit};

#[map(name = "OPEN_CGROUPS")]
pub static OPEN_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// `openat` arguments from entry, by thread, until the exit says whether it succeeded.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingOpen {
    path: u64,
    flags: u32,
    dfd: i32,
}

#[map(name = "PENDING_OPEN")]
static PENDING_OPEN: LruHashMap<u32, PendingOpen> = LruHashMap::with_max_entries(4096, 0);

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if tgid == config().self_tgid {
        return 0;
    }
    // SAFETY: helper without preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: map lookup of a plain key.
    if unsafe { OPEN_CGROUPS.get(&cgroup) }.is_none() {
        return 0;
    }
    // openat(dfd, filename, flags, mode): fixed syscall-tracepoint offsets.
    // SAFETY: fixed offsets inside the syscall tracepoint record.
    let (dfd, path, flags) = unsafe {
        (
            ctx.read_at::<i64>(16).unwrap_or(0),
            ctx.read_at::<u64>(24).unwrap_or(0),
            ctx.read_at::<u64>(32).unwrap_or(0),
        )
    };
    let pending = PendingOpen {
        path,
        flags: flags as u32,
        dfd: dfd as i32,
    };
    let _ = PENDING_OPEN.insert(&tid, &pending, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    // SAFETY: map lookup of a plain key.
    let Some(pending) = (unsafe { PENDING_OPEN.get(&tid) }).copied() else {
        return 0;
    };
    let _ = PENDING_OPEN.remove(&tid);
    // SAFETY: fixed offset inside the syscall tracepoint record.
    let ret: i64 = unsafe { ctx.read_at(16) }.unwrap_or(-1);
    if ret < 0 {
        return 0;
    }
    emit::<OpenRecord>(kind::OPEN, tgid, tid, |rec| {
        // SAFETY: `rec` is a reserved record; the path is read from user memory by the
        // checked helper.
        unsafe {
            (*rec).flags = pending.flags;
            (*rec).dfd = pending.dfd;
            (*rec).reserved = 0;
            let n = bpf_probe_read_user_str(
                (*rec).path.as_mut_ptr().cast(),
                PATH_LEN as u32,
                pending.path as *const _,
            );
            (*rec).path_len = if n > 0 { n as u32 - 1 } else { 0 };
        }
    });
    0
}
