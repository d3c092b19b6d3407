//! Process lifecycle: exec (with argv and environment), fork (processes only) and exit
//! (whole process).
//!
//! At `sched_process_exec` the new image is in place and the kernel has already copied
//! the argument and environment strings onto its stack, back to back and NUL-terminated:
//! `mm->arg_start..arg_end` and `mm->env_start..env_end`. The exec record carries the
//! first part of each; the rest, up to `EXEC_AREA_CAP`, goes out as chunk records in a
//! bounded loop *before* the exec record, so userspace has all of an exec's chunks when
//! its exec record arrives (ring-buffer records are read in reservation order) and never
//! waits on a timer. A failed exec never gets here.
use agentid_ebpf::{
    ARGV_LEN, CHUNK_LEN, ENV_LEN, EXEC_AREA_CAP, ExecChunkRecord, ExecRecord, ExitRecord,
    FILENAME_LEN, ForkRecord, MAX_CHUNKS, chunk_stream, exec_flags, kind,
};
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_task, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user, bpf_send_signal},
    },
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
};

use crate::{
    common::{
        EVENTS, config, count_drop, current_ids, dev_ino, emit, forget_self, is_self, read_u32,
        read_u64,
    },
    guard,
};

const SIGKILL: u32 = 9;

/// Kills the new image when the enforced agent's `tools` does not list its executable
/// (`bprm->file`, by device and inode): the signal is delivered before it returns to
/// user space, so it never runs an instruction of its own. Returns whether it did.
#[inline(always)]
fn enforce_tools(cfg: &agentid_ebpf::Config, tgid: u32, bprm: u64) -> bool {
    if cfg.binprm_file_off == 0 {
        return false;
    }
    let file = read_u64(bprm as usize, cfg.binprm_file_off) as usize;
    let inode = if file == 0 {
        0
    } else {
        read_u64(file, cfg.file_inode_off) as usize
    };
    let (dev, ino) = dev_ino(cfg, inode);
    // The directory the file was opened in (after symlinks), for `DIR/*` rules.
    let dir = if file == 0 || cfg.file_dentry_off == 0 {
        (0, 0)
    } else {
        let dentry = read_u64(file, cfg.file_dentry_off) as usize;
        let parent = if dentry == 0 {
            0
        } else {
            read_u64(dentry, cfg.dentry_parent_off) as usize
        };
        if parent == 0 || parent == dentry {
            (0, 0)
        } else {
            dev_ino(cfg, read_u64(parent, cfg.dentry_inode_off) as usize)
        }
    };
    let filename = read_u64(bprm as usize, cfg.binprm_filename_off);
    if guard::exe_allowed(tgid, (dev, ino), dir, filename) {
        return false;
    }
    // SAFETY: helper without preconditions; it signals the current task.
    unsafe { bpf_send_signal(SIGKILL) };
    true
}

/// One of the new image's string areas in its memory.
#[derive(Clone, Copy)]
struct Area {
    start: u64,
    len: u64,
}

/// The area between the `mm` fields at `offs` (start, end); `None` when unreadable.
#[inline(always)]
fn area(mm: usize, offs: (u32, u32)) -> Option<Area> {
    if mm == 0 {
        return None;
    }
    let (start, end) = (read_u64(mm, offs.0), read_u64(mm, offs.1));
    if start == 0 || end < start {
        return None;
    }
    Some(Area {
        start,
        len: end - start,
    })
}

/// Copies the first bytes of `area` (at most `N`, a power of two) into `dst`. Returns the
/// bytes copied, or `None` when the memory could not be read.
///
/// # Safety
/// `dst` must be valid for `N` bytes of writes.
#[inline(always)]
unsafe fn copy_head<const N: usize>(dst: *mut u8, area: Area) -> Option<u32> {
    // Two constant-bounded cases keep the size provably within `dst` for the verifier.
    let n = if area.len >= N as u64 {
        N as u32
    } else {
        (area.len as u32) & (N as u32 - 1)
    };
    if n == 0 {
        return Some(0);
    }
    // SAFETY: `dst` holds N bytes and n <= N; the source is user memory read through the
    // checked helper.
    let rc = unsafe { bpf_probe_read_user(dst.cast(), n, area.start as *const _) };
    (rc == 0).then_some(n)
}

/// Sends `area`'s bytes from `first` up to [`EXEC_AREA_CAP`] as chunk records. Notes the
/// exec flags to set in `EXEC_CHUNK_FLAGS`: `fault` when a chunk could not be read,
/// `CHUNK_DROPPED` when the ring buffer was full; either stops the area (userspace sees the
/// gap by the flag and by the missing bytes).
///
/// The loop is bounded by a constant and every chunk's offset is a constant of its
/// iteration (not a sum of earlier lengths), so the verifier's states at the loop head
/// match and prune on 6.1 as on newer kernels.
#[inline(always)]
fn send_chunks(ids: (u32, u32, u64), stream: u32, area: Area, first: usize, fault: u32) {
    let (tgid, tid, start_ns) = ids;
    let end = if area.len > EXEC_AREA_CAP as u64 {
        EXEC_AREA_CAP as u64
    } else {
        area.len
    };
    for i in 0..MAX_CHUNKS {
        let off = (first + i * CHUNK_LEN) as u64;
        if off >= end {
            break;
        }
        let left = end - off;
        let n = if left >= CHUNK_LEN as u64 {
            CHUNK_LEN as u32
        } else {
            (left as u32) & (CHUNK_LEN as u32 - 1)
        };
        let Some(mut entry) = EVENTS.reserve::<ExecChunkRecord>(0) else {
            count_drop(kind::EXEC_CHUNK);
            note_chunk_flag(exec_flags::CHUNK_DROPPED);
            return;
        };
        let rec = entry.as_mut_ptr();
        // SAFETY: `rec` is a reserved record and `data` holds CHUNK_LEN >= n bytes; the
        // source is user memory read through the checked helper.
        let rc = unsafe {
            // Field by field: a struct store becomes a memset call the verifier walks
            // for every chunk of every path.
            (*rec).header.kind = kind::EXEC_CHUNK;
            (*rec).header.reserved = 0;
            (*rec).header.ktime_ns = bpf_ktime_get_boot_ns();
            (*rec).header.tgid = tgid;
            (*rec).header.tid = tid;
            (*rec).header.uid = 0;
            (*rec).header.gid = 0;
            (*rec).header.cgroup_id = 0;
            (*rec).header.comm = [0; 16];
            (*rec).start_ns = start_ns;
            (*rec).stream = stream;
            (*rec).offset = off as u32;
            (*rec).len = n;
            (*rec).reserved = 0;
            bpf_probe_read_user(
                (*rec).data.as_mut_ptr().cast(),
                n,
                (area.start + off) as *const _,
            )
        };
        if rc != 0 {
            entry.discard(0);
            note_chunk_flag(fault);
            return;
        }
        // No wakeup: the exec record right after these asks for one.
        entry.submit(u64::from(BPF_RB_NO_WAKEUP));
    }
}

/// The exec flags the chunk loops set, kept in a per-CPU map rather than a register:
/// read back from the map they are an unknown value to the verifier, so the paths that
/// left the loops early (a fault, a full ring) and those that did not converge and are
/// verified once. As constants in a register they stayed apart, and the exec record's
/// code after the loops was verified again for every combination: on 6.1 that exceeded
/// the verifier's budget.
#[map(name = "EXEC_CHUNK_FLAGS")]
static EXEC_CHUNK_FLAGS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn note_chunk_flag(flag: u32) {
    if let Some(slot) = EXEC_CHUNK_FLAGS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *slot |= flag };
    }
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let (tgid, tid) = current_ids();
    if is_self(tgid) {
        return 0;
    }
    let bprm: u64 = ctx.arg(2);
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() } as usize;
    let start_ns = read_u64(task, cfg.task_start_boottime_off);
    let mm = read_u64(task, cfg.task_mm_off) as usize;
    let argv_area = area(mm, (cfg.mm_arg_start_off, cfg.mm_arg_end_off));
    let env_area = area(mm, (cfg.mm_env_start_off, cfg.mm_env_end_off));

    // The areas' tails first (see the module doc), then the exec record.
    let ids = (tgid, tid, start_ns);
    if let Some(slot) = EXEC_CHUNK_FLAGS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *slot = 0 };
    }
    if let Some(a) = argv_area {
        send_chunks(ids, chunk_stream::ARGV, a, ARGV_LEN, exec_flags::ARGV_FAULT);
    }
    if let Some(a) = env_area {
        send_chunks(ids, chunk_stream::ENV, a, ENV_LEN, exec_flags::ENV_FAULT);
    }
    // After the loops, so the verifier walks them once, not once per verdict.
    if enforce_tools(&cfg, tgid, bprm) {
        note_chunk_flag(exec_flags::BLOCKED);
    }
    let chunk_flags = EXEC_CHUNK_FLAGS.get(0).copied().unwrap_or(0);

    emit::<ExecRecord>(kind::EXEC, tgid, tid, |rec| {
        // SAFETY: `rec` is a reserved record; kernel pointers are read through helpers only.
        unsafe {
            (*rec).ppid = parent_tgid(cfg.task_real_parent_off, cfg.task_tgid_off);
            (*rec).start_ns = start_ns;
            (*rec).loginuid = if cfg.task_loginuid_off == 0 {
                u32::MAX
            } else {
                bpf_probe_read_kernel((task + cfg.task_loginuid_off as usize) as *const u32)
                    .unwrap_or(u32::MAX)
            };
            let mut flags = chunk_flags;

            let filename: u64 = bpf_probe_read_kernel(
                (bprm as usize + cfg.binprm_filename_off as usize) as *const u64,
            )
            .unwrap_or(0);
            let n = bpf_probe_read_kernel_str(
                (*rec).filename.as_mut_ptr().cast(),
                FILENAME_LEN as u32,
                filename as *const _,
            );
            let n = if n > 0 { n as u32 - 1 } else { 0 };
            if n as usize == FILENAME_LEN - 1 {
                flags |= exec_flags::FILENAME_TRUNCATED;
            }
            (*rec).filename_len = n;

            (*rec).argc = read_u32(bprm as usize, cfg.binprm_argc_off);
            (*rec).envc = read_u32(bprm as usize, cfg.binprm_envc_off);
            (*rec).argv_len = 0;
            (*rec).argv_total = 0;
            match argv_area {
                Some(a) => {
                    (*rec).argv_total = total(a);
                    if a.len > EXEC_AREA_CAP as u64 {
                        flags |= exec_flags::ARGV_TRUNCATED;
                    }
                    match copy_head::<ARGV_LEN>((*rec).argv.as_mut_ptr(), a) {
                        Some(n) => (*rec).argv_len = n,
                        None => flags |= exec_flags::ARGV_MISSING,
                    }
                }
                None => flags |= exec_flags::ARGV_MISSING,
            }
            (*rec).env_len = 0;
            (*rec).env_total = 0;
            match env_area {
                Some(a) => {
                    (*rec).env_total = total(a);
                    if a.len > EXEC_AREA_CAP as u64 {
                        flags |= exec_flags::ENV_TRUNCATED;
                    }
                    match copy_head::<ENV_LEN>((*rec).env.as_mut_ptr(), a) {
                        Some(n) => (*rec).env_len = n,
                        None => flags |= exec_flags::ENV_MISSING,
                    }
                }
                None => flags |= exec_flags::ENV_MISSING,
            }
            (*rec).flags = flags;
        }
    });
    0
}

/// An area's length for the record's u32 field.
#[inline(always)]
fn total(a: Area) -> u32 {
    if a.len > u64::from(u32::MAX) {
        u32::MAX
    } else {
        a.len as u32
    }
}

/// tgid of the current task's real parent, 0 when unreadable.
///
/// # Safety
/// Offsets must come from this kernel's BTF.
#[inline(always)]
unsafe fn parent_tgid(real_parent_off: u32, tgid_off: u32) -> u32 {
    // SAFETY: kernel memory read through the checked helper.
    unsafe {
        let task = bpf_get_current_task() as usize;
        let parent: u64 =
            bpf_probe_read_kernel((task + real_parent_off as usize) as *const u64).unwrap_or(0);
        if parent == 0 {
            return 0;
        }
        bpf_probe_read_kernel((parent as usize + tgid_off as usize) as *const u32).unwrap_or(0)
    }
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`, run in the
/// parent. A child whose pid differs from its tgid is a new thread, not a process.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let (tgid, tid) = current_ids();
    if is_self(tgid) {
        return 0;
    }
    let child: u64 = ctx.arg(1);
    // SAFETY: kernel memory read through the checked helper.
    let (child_pid, child_tgid) = unsafe {
        (
            bpf_probe_read_kernel((child as usize + cfg.task_pid_off as usize) as *const u32)
                .unwrap_or(0),
            bpf_probe_read_kernel((child as usize + cfg.task_tgid_off as usize) as *const u32)
                .unwrap_or(0),
        )
    };
    if child_pid != child_tgid || child_tgid == 0 {
        return 0;
    }
    guard::inherit(tgid, child_tgid);
    emit::<ForkRecord>(kind::FORK, tgid, tid, |rec| {
        // SAFETY: `rec` is a reserved record.
        unsafe {
            (*rec).parent_tgid = tgid;
            (*rec).child_tgid = child_tgid;
            (*rec).child_start_ns = read_u64(child as usize, cfg.task_start_boottime_off);
        }
    });
    0
}

/// `sched_process_exit(struct task_struct *p, bool group_dead)` (6.x; older kernels have
/// no `group_dead`, there the leader's exit stands for the process).
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let (tgid, tid) = current_ids();
    let whole_process = if cfg.exit_has_group_dead != 0 {
        let group_dead: u64 = ctx.arg(1);
        group_dead & 0xff != 0
    } else {
        tgid == tid
    };
    if is_self(tgid) {
        if whole_process {
            forget_self();
        }
        return 0;
    }
    if !whole_process {
        return 0;
    }
    guard::forget(tgid);
    let task: u64 = ctx.arg(0);
    // SAFETY: kernel memory read through the checked helper.
    let status: u32 = unsafe {
        bpf_probe_read_kernel((task as usize + cfg.task_exit_code_off as usize) as *const u32)
    }
    .unwrap_or(0);
    emit::<ExitRecord>(kind::EXIT, tgid, tid, |rec| {
        // SAFETY: `rec` is a reserved record.
        unsafe {
            (*rec).status = status;
            (*rec).reserved = 0;
            (*rec).start_ns = read_u64(task as usize, cfg.task_start_boottime_off);
        }
    });
    0
}
