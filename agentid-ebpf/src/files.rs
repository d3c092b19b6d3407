//! File opens (`openat`, `open`) by tasks in watched cgroups: where agents read their
//! credential files.
//!
//! Only cgroups userspace put in `OPEN_CGROUPS` (those of registered agents) are reported:
//! every open on a host is far too many records, an agent's are few.
//!
//! Each record names the file actually opened by device and inode, read from the fd the
//! syscall returned: the path string is whatever the program passed (a symlink, a hard
//! link, a bind mount, `/proc/self/fd/N`), the inode is what it got.
use agentid_ebpf::{Config, OpenRecord, PATH_LEN, kind};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, generated::bpf_probe_read_user_str,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};

use crate::common::{config, current_ids, dev_ino, emit, is_self, read_u32, read_u64};

/// The watched cgroups (agents'): their opens and their DNS are reported.
#[map(name = "OPEN_CGROUPS")]
pub static OPEN_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// `open`/`openat` arguments from entry, by thread, until the exit says whether it succeeded.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingOpen {
    path: u64,
    flags: u32,
    dfd: i32,
}

#[map(name = "PENDING_OPEN")]
static PENDING_OPEN: LruHashMap<u32, PendingOpen> = LruHashMap::with_max_entries(4096, 0);

/// `AT_FDCWD`: what `open(2)` resolves relative paths against.
const AT_FDCWD: i32 = -100;

/// Notes an open's arguments for its exit when the task is in a watched cgroup.
#[inline(always)]
fn on_enter(path: u64, flags: u64, dfd: i64) {
    let (tgid, tid) = current_ids();
    if is_self(tgid) {
        return;
    }
    // SAFETY: helper without preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: map lookup of a plain key.
    if unsafe { OPEN_CGROUPS.get(&cgroup) }.is_none() {
        return;
    }
    let pending = PendingOpen {
        path,
        flags: flags as u32,
        dfd: dfd as i32,
    };
    let _ = PENDING_OPEN.insert(&tid, &pending, 0);
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    // openat(dfd, filename, flags, mode): fixed syscall-tracepoint offsets.
    // SAFETY: fixed offsets inside the syscall tracepoint record.
    let (dfd, path, flags) = unsafe {
        (
            ctx.read_at::<i64>(16).unwrap_or(0),
            ctx.read_at::<u64>(24).unwrap_or(0),
            ctx.read_at::<u64>(32).unwrap_or(0),
        )
    };
    on_enter(path, flags, dfd);
    0
}

/// `open(2)`: glibc never calls it on x86-64, but a program can (`syscall(SYS_open, …)`),
/// and one that wants to read a credential file unseen would.
#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    // open(filename, flags, mode).
    // SAFETY: fixed offsets inside the syscall tracepoint record.
    let (path, flags) = unsafe {
        (
            ctx.read_at::<u64>(16).unwrap_or(0),
            ctx.read_at::<u64>(24).unwrap_or(0),
        )
    };
    on_enter(path, flags, i64::from(AT_FDCWD));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    on_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    on_exit(&ctx);
    0
}

/// A successful open noted at entry: the record, with the inode behind the returned fd.
#[inline(always)]
fn on_exit(ctx: &TracePointContext) {
    let (tgid, tid) = current_ids();
    // SAFETY: map lookup of a plain key.
    let Some(pending) = (unsafe { PENDING_OPEN.get(&tid) }).copied() else {
        return;
    };
    let _ = PENDING_OPEN.remove(&tid);
    // Every syscall exit tracepoint has the return value at the same offset.
    // SAFETY: fixed offset inside the syscall tracepoint record.
    let ret: i64 = unsafe { ctx.read_at(16) }.unwrap_or(-1);
    if ret < 0 {
        return;
    }
    let (dev, ino) = opened_file(&config(), ret as u64);
    emit::<OpenRecord>(kind::OPEN, tgid, tid, |rec| {
        // SAFETY: `rec` is a reserved record; the path is read from user memory by the
        // checked helper.
        unsafe {
            (*rec).flags = pending.flags;
            (*rec).dfd = pending.dfd;
            (*rec).dev = dev;
            (*rec).ino = ino;
            let n = bpf_probe_read_user_str(
                (*rec).path.as_mut_ptr().cast(),
                PATH_LEN as u32,
                pending.path as *const _,
            );
            (*rec).path_len = if n > 0 { n as u32 - 1 } else { 0 };
        }
    });
}

/// `(s_dev, i_ino)` of the file behind the current task's `fd`: `task->files->fdt->fd[fd]
/// ->f_inode`, then `i_ino` and `i_sb->s_dev`. `(0, 0)` when any step cannot be read (the
/// offsets are missing, or the fd is past the table).
#[inline(always)]
fn opened_file(cfg: &Config, fd: u64) -> (u32, u64) {
    if cfg.file_inode_off == 0 {
        return (0, 0);
    }
    // SAFETY: helper without preconditions; the task is only read through checked helpers.
    let task = unsafe { bpf_get_current_task() } as usize;
    let files = read_u64(task, cfg.task_files_off) as usize;
    if files == 0 {
        return (0, 0);
    }
    let fdt = read_u64(files, cfg.files_fdt_off) as usize;
    if fdt == 0 || fd >= u64::from(read_u32(fdt, cfg.fdtable_max_fds_off)) {
        return (0, 0);
    }
    let fds = read_u64(fdt, cfg.fdtable_fd_off) as usize;
    if fds == 0 {
        return (0, 0);
    }
    let file = read_u64(fds + fd as usize * 8, 0) as usize;
    if file == 0 {
        return (0, 0);
    }
    dev_ino(cfg, read_u64(file, cfg.file_inode_off) as usize)
}
