//! Process lifecycle: exec (with argv and environment), fork (processes only) and exit
//! (whole process).
//!
//! At `sched_process_exec` the new image is in place and the kernel has already copied
//! the argument and environment strings onto its stack, back to back and NUL-terminated:
//! `mm->arg_start..arg_end` and `mm->env_start..env_end`. One read of each replaces what
//! used to be a stash at `sys_enter_execve` built one string at a time (80 helper calls,
//! 7.6 µs per exec) plus a map hand-off to this point; a failed exec never gets here.
use agentid_ebpf::{
    ARGV_LEN, ENV_LEN, ExecRecord, ExitRecord, FILENAME_LEN, ForkRecord, exec_flags, kind,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use crate::common::{EVENTS, config, count_drop, current_ids, fill_header, wake_flags};

/// Copies the user memory `start..end` into `dst` (capacity `N`, a power of two): the
/// whole range when it fits, else its first `N` bytes. Returns the bytes copied and
/// whether the range was cut, or `None` when the memory could not be read.
///
/// # Safety
/// `dst` must be valid for `N` bytes of writes.
#[inline(always)]
unsafe fn copy_user_range<const N: usize>(
    dst: *mut u8,
    start: u64,
    end: u64,
) -> Option<(u32, bool)> {
    if start == 0 || end < start {
        return None;
    }
    let len = end - start;
    // Two constant-bounded cases keep the size provably within `dst` for the verifier.
    let (n, cut) = if len >= N as u64 {
        (N as u32, len > N as u64)
    } else {
        ((len as u32) & (N as u32 - 1), false)
    };
    if n == 0 {
        return Some((0, false));
    }
    // SAFETY: `dst` holds N bytes and n <= N; the source is user memory read through the
    // checked helper.
    let rc = unsafe { bpf_probe_read_user(dst.cast(), n, start as *const _) };
    (rc == 0).then_some((n, cut))
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let (tgid, tid) = current_ids();
    if tgid == cfg.self_tgid {
        return 0;
    }
    let bprm: u64 = ctx.arg(2);
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count_drop(kind::EXEC);
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is a reserved record; kernel pointers are read through helpers only.
    unsafe {
        fill_header(&raw mut (*rec).header, kind::EXEC, tgid, tid);
        (*rec).ppid = parent_tgid(cfg.task_real_parent_off, cfg.task_tgid_off);
        let task = bpf_get_current_task() as usize;
        (*rec).start_ns = read_u64(task, cfg.task_start_boottime_off);
        (*rec).loginuid = if cfg.task_loginuid_off == 0 {
            u32::MAX
        } else {
            bpf_probe_read_kernel((task + cfg.task_loginuid_off as usize) as *const u32)
                .unwrap_or(u32::MAX)
        };
        let mut flags = 0;

        let filename: u64 =
            bpf_probe_read_kernel((bprm as usize + cfg.binprm_filename_off as usize) as *const u64)
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

        // The new image's strings: argv and environment, one copy each.
        (*rec).argc = read_u32(bprm as usize, cfg.binprm_argc_off);
        (*rec).envc = read_u32(bprm as usize, cfg.binprm_envc_off);
        let mm = read_u64(task, cfg.task_mm_off) as usize;
        let (argv_len, argv_flags) = copy_mm_range::<ARGV_LEN>(
            (*rec).argv.as_mut_ptr(),
            mm,
            (cfg.mm_arg_start_off, cfg.mm_arg_end_off),
            (exec_flags::ARGV_TRUNCATED, exec_flags::ARGV_MISSING),
        );
        (*rec).argv_len = argv_len;
        // An unreadable environment is just an empty one (nothing to flag it by).
        let (env_len, env_flags) = copy_mm_range::<ENV_LEN>(
            (*rec).env.as_mut_ptr(),
            mm,
            (cfg.mm_env_start_off, cfg.mm_env_end_off),
            (exec_flags::ENV_TRUNCATED, 0),
        );
        (*rec).env_len = env_len;
        flags |= argv_flags | env_flags;
        (*rec).flags = flags;
    }
    // SAFETY: `rec` is the reserved record; its header was filled above.
    let flags = wake_flags(unsafe { (*rec).header.ktime_ns });
    entry.submit(flags);
    0
}

/// Copies one of the new image's string areas (`mm` fields at `offs`: start, end) into
/// `dst`; returns the bytes copied and `flags.0` when the area was cut, `flags.1` when it
/// could not be read.
///
/// # Safety
/// `dst` must be valid for `N` bytes of writes; offsets must come from this kernel's BTF.
#[inline(always)]
unsafe fn copy_mm_range<const N: usize>(
    dst: *mut u8,
    mm: usize,
    offs: (u32, u32),
    flags: (u32, u32),
) -> (u32, u32) {
    if mm == 0 {
        return (0, flags.1);
    }
    // SAFETY: as required of the caller.
    match unsafe { copy_user_range::<N>(dst, read_u64(mm, offs.0), read_u64(mm, offs.1)) } {
        Some((n, true)) => (n, flags.0),
        Some((n, false)) => (n, 0),
        None => (0, flags.1),
    }
}

/// A u32 field of a kernel struct, 0 when unreadable.
#[inline(always)]
fn read_u32(base: usize, off: u32) -> u32 {
    // SAFETY: kernel memory read through the checked helper.
    unsafe { bpf_probe_read_kernel((base + off as usize) as *const u32) }.unwrap_or(0)
}

/// A u64 field of a kernel struct, 0 when unreadable.
#[inline(always)]
fn read_u64(base: usize, off: u32) -> u64 {
    // SAFETY: kernel memory read through the checked helper.
    unsafe { bpf_probe_read_kernel((base + off as usize) as *const u64) }.unwrap_or(0)
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
    if tgid == cfg.self_tgid {
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
    let Some(mut entry) = EVENTS.reserve::<ForkRecord>(0) else {
        count_drop(kind::FORK);
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is a reserved record.
    unsafe {
        fill_header(&raw mut (*rec).header, kind::FORK, tgid, tid);
        (*rec).parent_tgid = tgid;
        (*rec).child_tgid = child_tgid;
        (*rec).child_start_ns = read_u64(child as usize, cfg.task_start_boottime_off);
    }
    // SAFETY: `rec` is the reserved record; its header was filled above.
    let flags = wake_flags(unsafe { (*rec).header.ktime_ns });
    entry.submit(flags);
    0
}

/// `sched_process_exit(struct task_struct *p, bool group_dead)` (6.x; older kernels have
/// no `group_dead`, there the leader's exit stands for the process).
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let (tgid, tid) = current_ids();
    if tgid == cfg.self_tgid {
        return 0;
    }
    let whole_process = if cfg.exit_has_group_dead != 0 {
        let group_dead: u64 = ctx.arg(1);
        group_dead & 0xff != 0
    } else {
        tgid == tid
    };
    if !whole_process {
        return 0;
    }
    let task: u64 = ctx.arg(0);
    // SAFETY: kernel memory read through the checked helper.
    let status: u32 = unsafe {
        bpf_probe_read_kernel((task as usize + cfg.task_exit_code_off as usize) as *const u32)
    }
    .unwrap_or(0);
    let Some(mut entry) = EVENTS.reserve::<ExitRecord>(0) else {
        count_drop(kind::EXIT);
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is a reserved record.
    unsafe {
        fill_header(&raw mut (*rec).header, kind::EXIT, tgid, tid);
        (*rec).status = status;
        (*rec).reserved = 0;
        (*rec).start_ns = read_u64(task as usize, cfg.task_start_boottime_off);
    }
    // SAFETY: `rec` is the reserved record; its header was filled above.
    let flags = wake_flags(unsafe { (*rec).header.ktime_ns });
    entry.submit(flags);
    0
}
