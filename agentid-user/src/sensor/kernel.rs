//! Facts about the running kernel that the programs need at load time.
//!
//! Rust eBPF has no CO-RE, so offsets into kernel structs are read from the kernel's own
//! BTF (`/sys/kernel/btf/vmlinux`) here and handed to the programs as a global.
use std::path::{Path, PathBuf};

use agentid_ebpf::Config;
use btfparse::{Offset, Readable, TypeInformation};

use super::SensorError;

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS: &str = "/sys/kernel/tracing";

struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| {
                btfparse::Error::new(btfparse::ErrorKind::IOError, "read past end of BTF")
            })?;
        buffer.copy_from_slice(src);
        Ok(())
    }
}

/// Builds the programs' [`Config`] for this kernel.
pub fn probe_config() -> Result<Config, SensorError> {
    let raw = std::fs::read(VMLINUX_BTF)
        .map_err(|e| SensorError::Btf(format!("{VMLINUX_BTF}: {e} (kernel built without BTF?)")))?;
    let btf = TypeInformation::new(&Bytes(raw))
        .map_err(|e| SensorError::Btf(format!("parsing {VMLINUX_BTF}: {e:?}")))?;
    let offset = |ty: &str, member: &str| -> Result<u32, SensorError> {
        let id = btf
            .id_of(ty)
            .ok_or_else(|| SensorError::Btf(format!("no `{ty}` in kernel BTF")))?;
        match btf.offset_of(id, member) {
            Ok((_, Offset::ByteOffset(off))) => Ok(off),
            Ok((_, Offset::BitOffsetAndSize(..))) => {
                Err(SensorError::Btf(format!("`{ty}.{member}` is a bitfield")))
            }
            Err(e) => Err(SensorError::Btf(format!("`{ty}.{member}`: {e:?}"))),
        }
    };
    Ok(Config {
        learn_grace_s: 0,
        exit_has_group_dead: u32::from(exit_has_group_dead()?),
        task_pid_off: offset("task_struct", "pid")?,
        task_tgid_off: offset("task_struct", "tgid")?,
        task_real_parent_off: offset("task_struct", "real_parent")?,
        task_exit_code_off: offset("task_struct", "exit_code")?,
        binprm_filename_off: offset("linux_binprm", "filename")?,
        task_start_boottime_off: offset("task_struct", "start_boottime")?,
        // Absent without CONFIG_AUDIT: then no login uid is reported.
        task_loginuid_off: offset("task_struct", "loginuid").unwrap_or(0),
        binprm_file_off: offset("linux_binprm", "file")?,
        task_mm_off: offset("task_struct", "mm")?,
        mm_arg_start_off: offset("mm_struct", "arg_start")?,
        mm_arg_end_off: offset("mm_struct", "arg_end")?,
        mm_env_start_off: offset("mm_struct", "env_start")?,
        mm_env_end_off: offset("mm_struct", "env_end")?,
        binprm_argc_off: offset("linux_binprm", "argc")?,
        binprm_envc_off: offset("linux_binprm", "envc")?,
        learn_min_hold_s: 0,
        task_files_off: offset("task_struct", "files")?,
        files_fdt_off: offset("files_struct", "fdt")?,
        fdtable_fd_off: offset("fdtable", "fd")?,
        fdtable_max_fds_off: offset("fdtable", "max_fds")?,
        file_inode_off: offset("file", "f_inode")?,
        inode_ino_off: offset("inode", "i_ino")?,
        inode_sb_off: offset("inode", "i_sb")?,
        sb_dev_off: offset("super_block", "s_dev")?,
        cgroup_self_off: offset("cgroup", "self")?,
        cgroup_root_off: offset("cgroup", "root")?,
        cgroup_kn_off: offset("cgroup", "kn")?,
        css_parent_off: offset("cgroup_subsys_state", "parent")?,
        root_hierarchy_id_off: offset("cgroup_root", "hierarchy_id")?,
        kn_id_off: offset("kernfs_node", "id")?,
        file_dentry_off: offset("file", "f_path")? + offset("path", "dentry")?,
        dentry_parent_off: offset("dentry", "d_parent")?,
        dentry_inode_off: offset("dentry", "d_inode")?,
    })
}

/// Whether `sched_process_exit` carries `group_dead` (added in 6.x): its tracepoint
/// format lists the field. Older kernels fall back to the leader's exit.
fn exit_has_group_dead() -> Result<bool, SensorError> {
    let format = tracefs()?.join("events/sched/sched_process_exit/format");
    let text = std::fs::read_to_string(&format)
        .map_err(|e| SensorError::Tracefs(format!("{}: {e}", format.display())))?;
    Ok(text.contains(" group_dead;"))
}

/// The tracefs mount, mounting it at `/sys/kernel/tracing` when absent (classic
/// tracepoints are attached by id, read from there).
pub fn tracefs() -> Result<PathBuf, SensorError> {
    let path = Path::new(TRACEFS);
    if path.join("events").is_dir() {
        return Ok(path.to_owned());
    }
    let legacy = Path::new("/sys/kernel/debug/tracing");
    if legacy.join("events").is_dir() {
        return Ok(legacy.to_owned());
    }
    mount("tracefs", TRACEFS, "tracefs")?;
    Ok(path.to_owned())
}

fn mount(source: &str, target: &str, fstype: &str) -> Result<(), SensorError> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(|e| SensorError::Tracefs(e.to_string()));
    let (src, tgt, fs) = (c(source)?, c(target)?, c(fstype)?);
    crate::sys::mount(&src, &tgt, &fs)
        .map_err(|e| SensorError::Tracefs(format!("mounting {fstype} on {target}: {e}")))
}
