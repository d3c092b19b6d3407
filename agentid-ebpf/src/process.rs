//! Process lifecycle: exec (with argv), fork (processes only) and exit (whole process).
//!
//! argv is only readable before the old image is torn down, so it is captured at
//! `sys_enter_execve(at)` into a per-thread pending slot and attached to the record when
//! `sched_process_exec` reports the exec succeeded. A failed exec clears its slot at
//! `sys_exit_execve(at)`.
use agentid_ebpf::{
    ARGV_LEN, ENV_LEN, ExecRecord, ExitRecord, FILENAME_LEN, ForkRecord, MAX_ARGS, MAX_ENV,
    exec_flags, kind,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
        bpf_probe_read_user,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user_str},
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::common::{EVENTS, config, count_drop, current_ids, fill_header, wake_flags};

/// argv captured at exec entry. The buffer is twice `ARGV_LEN` so that a read of up to
/// `ARGV_LEN` bytes at any offset below `ARGV_LEN` stays in bounds, which is what lets the
/// verifier accept a variable write offset.
#[repr(C)]
pub struct PendingArgv {
    argc: u32,
    len: u32,
    flags: u32,
    envc: u32,
    env_len: u32,
    reserved: u32,
    buf: [u8; 2 * ARGV_LEN],
    env: [u8; 2 * ENV_LEN],
}

/// In-flight execs by thread id. LRU so that an exec whose exit we never see (probes
/// attached mid-exec) cannot fill the map.
#[map(name = "PENDING_ARGV")]
static PENDING_ARGV: LruHashMap<u32, PendingArgv> = LruHashMap::with_max_entries(1024, 0);

/// Per-CPU scratch to build a `PendingArgv` (too large for the 512-byte BPF stack).
#[map(name = "ARGV_SCRATCH")]
static ARGV_SCRATCH: PerCpuArray<PendingArgv> = PerCpuArray::with_max_entries(1, 0);

// Syscall tracepoint records are fixed by the syscall tracing ABI: 8 bytes of common
// fields, the syscall number padded to 8, then each argument as 8 bytes.
const SYSCALL_ARG0: usize = 16;
const SYSCALL_ARG_SIZE: usize = 8;
const SYSCALL_RET: usize = 16;

#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    // execve(filename, argv, envp)
    stash_argv(
        &ctx,
        SYSCALL_ARG0 + SYSCALL_ARG_SIZE,
        SYSCALL_ARG0 + 2 * SYSCALL_ARG_SIZE,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    // execveat(dirfd, filename, argv, envp, flags)
    stash_argv(
        &ctx,
        SYSCALL_ARG0 + 2 * SYSCALL_ARG_SIZE,
        SYSCALL_ARG0 + 3 * SYSCALL_ARG_SIZE,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_execve")]
pub fn sys_exit_execve(ctx: TracePointContext) -> u32 {
    clear_failed_exec(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_execveat")]
pub fn sys_exit_execveat(ctx: TracePointContext) -> u32 {
    clear_failed_exec(&ctx);
    0
}

#[inline(always)]
fn clear_failed_exec(ctx: &TracePointContext) {
    // SAFETY: fixed offset inside the syscall tracepoint record.
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET) }.unwrap_or(0);
    if ret < 0 {
        let (_, tid) = current_ids();
        let _ = PENDING_ARGV.remove(&tid);
    }
}

#[inline(always)]
fn stash_argv(ctx: &TracePointContext, argv_field: usize, envp_field: usize) {
    let (tgid, tid) = current_ids();
    if tgid == config().self_tgid {
        return;
    }
    // SAFETY: fixed offset inside the syscall tracepoint record.
    let Ok(argv) = (unsafe { ctx.read_at::<u64>(argv_field) }) else {
        return;
    };
    let Some(scratch) = ARGV_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch slot, exclusively ours while this program runs.
    let scratch = unsafe { &mut *scratch };
    scratch.argc = 0;
    scratch.flags = 0;
    let mut off: usize = 0;
    let mut i = 0;
    while i < MAX_ARGS {
        let slot = (argv as usize + i * 8) as *const u64;
        // SAFETY: user pointer read through the checked helper.
        let Ok(arg) = (unsafe { bpf_probe_read_user(slot) }) else {
            scratch.flags |= exec_flags::ARGV_MISSING;
            break;
        };
        if arg == 0 {
            break;
        }
        scratch.argc += 1;
        if off >= ARGV_LEN {
            scratch.flags |= exec_flags::ARGV_TRUNCATED;
            break;
        }
        let dst = scratch.buf.as_mut_ptr().wrapping_add(off & (ARGV_LEN - 1));
        // SAFETY: dst + ARGV_LEN stays inside the 2*ARGV_LEN buffer (offset masked below it).
        let n = unsafe { bpf_probe_read_user_str(dst.cast(), ARGV_LEN as u32, arg as *const _) };
        if n <= 0 {
            scratch.flags |= exec_flags::ARGV_MISSING;
            break;
        }
        off += n as usize;
        i += 1;
    }
    if i == MAX_ARGS {
        let slot = (argv as usize + MAX_ARGS * 8) as *const u64;
        // SAFETY: as above.
        if let Ok(next) = unsafe { bpf_probe_read_user(slot) }
            && next != 0
        {
            scratch.flags |= exec_flags::ARGV_TRUNCATED;
            scratch.argc += 1;
        }
    }
    if off > ARGV_LEN {
        scratch.flags |= exec_flags::ARGV_TRUNCATED;
        off = ARGV_LEN;
    }
    scratch.len = off as u32;
    // SAFETY: fixed offset inside the syscall tracepoint record.
    let envp = unsafe { ctx.read_at::<u64>(envp_field) }.unwrap_or(0);
    stash_env(scratch, envp);
    let _ = PENDING_ARGV.insert(&tid, scratch, 0);
}

/// Copies up to `MAX_ENV` environment strings, the same bounded way as argv.
#[inline(always)]
fn stash_env(scratch: &mut PendingArgv, envp: u64) {
    scratch.envc = 0;
    scratch.env_len = 0;
    if envp == 0 {
        return;
    }
    let mut off: usize = 0;
    let mut i = 0;
    while i < MAX_ENV {
        let slot = (envp as usize + i * 8) as *const u64;
        // SAFETY: user pointer read through the checked helper.
        let Ok(var) = (unsafe { bpf_probe_read_user(slot) }) else {
            break;
        };
        if var == 0 {
            break;
        }
        scratch.envc += 1;
        if off >= ENV_LEN {
            scratch.flags |= exec_flags::ENV_TRUNCATED;
            break;
        }
        let dst = scratch.env.as_mut_ptr().wrapping_add(off & (ENV_LEN - 1));
        // SAFETY: dst + ENV_LEN stays inside the 2*ENV_LEN buffer.
        let n = unsafe { bpf_probe_read_user_str(dst.cast(), ENV_LEN as u32, var as *const _) };
        if n <= 0 {
            break;
        }
        off += n as usize;
        i += 1;
    }
    if i == MAX_ENV {
        scratch.flags |= exec_flags::ENV_TRUNCATED;
    }
    if off > ENV_LEN {
        scratch.flags |= exec_flags::ENV_TRUNCATED;
        off = ENV_LEN;
    }
    scratch.env_len = off as u32;
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let (tgid, tid) = current_ids();
    if tgid == cfg.self_tgid {
        return 0;
    }
    let old_pid: u64 = ctx.arg(1);
    let old_pid = old_pid as u32;
    let bprm: u64 = ctx.arg(2);
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count_drop(kind::EXEC);
        let _ = PENDING_ARGV.remove(&old_pid);
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

        match PENDING_ARGV.get(&old_pid) {
            Some(pending) => {
                (*rec).argc = pending.argc;
                (*rec).argv_len = pending.len;
                flags |= pending.flags;
                let _ = bpf_probe_read_kernel_buf(pending.buf.as_ptr(), &mut (*rec).argv);
                (*rec).envc = pending.envc;
                (*rec).env_len = pending.env_len;
                let _ = bpf_probe_read_kernel_buf(pending.env.as_ptr(), &mut (*rec).env);
                let _ = PENDING_ARGV.remove(&old_pid);
            }
            None => {
                (*rec).argc = 0;
                (*rec).argv_len = 0;
                (*rec).envc = 0;
                (*rec).env_len = 0;
                flags |= exec_flags::ARGV_MISSING;
            }
        }
        (*rec).flags = flags;
    }
    // SAFETY: `rec` is the reserved record; its header was filled above.
    let flags = wake_flags(unsafe { (*rec).header.ktime_ns });
    entry.submit(flags);
    0
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
