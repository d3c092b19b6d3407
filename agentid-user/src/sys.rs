//! The libc calls agentid makes, each behind a safe wrapper: every `unsafe` block that talks
//! to the C library lives here, next to the reason it is sound.
//!
//! Flags and error numbers are re-exported so callers need no `libc` of their own.
use std::{
    ffi::{CStr, CString},
    fs::File,
    io::{self, Read as _},
    os::fd::AsRawFd as _,
    path::Path,
};

pub use libc::{ELOOP, O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK, clockid_t};

/// The clock that keeps counting while the machine sleeps (the eBPF side's `ktime`).
pub const CLOCK_BOOTTIME: clockid_t = libc::CLOCK_BOOTTIME;
/// Wall-clock time.
pub const CLOCK_REALTIME: clockid_t = libc::CLOCK_REALTIME;

/// First buffer for the `getpwuid_r`/`getgrnam_r` string data; grown on `ERANGE`.
const NSS_BUF: usize = 16 * 1024;
/// Largest buffer tried: a group with that many members is not one we look up.
const NSS_BUF_MAX: usize = 1024 * 1024;

/// The effective uid of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Sets the process's file-creation mask; returns the previous one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(mask) }
}

/// Takes an exclusive `flock` on `file` without waiting: an error (`EWOULDBLOCK`) when
/// another open file description holds it. Released when every descriptor of the file closes.
pub fn try_lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: the fd is valid for the borrow of `file`; flock touches no memory of ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs a reentrant NSS lookup (`getpwuid_r`, `getgrnam_r`) with a scratch buffer, growing
/// it while the call answers `ERANGE`. `call` gets the buffer and returns the call's status
/// plus whether an entry was found.
fn with_nss_buf<T>(mut call: impl FnMut(&mut [u8]) -> (i32, Option<T>)) -> Option<T> {
    let mut len = NSS_BUF;
    loop {
        let mut buf = vec![0u8; len];
        match call(&mut buf) {
            (0, found) => return found,
            (libc::ERANGE, _) if len < NSS_BUF_MAX => len *= 4,
            _ => return None,
        }
    }
}

/// The user name of `uid` from the system's user database (files, LDAP, … as NSS says).
pub fn user_name(uid: u32) -> Option<String> {
    with_nss_buf(|buf| {
        // SAFETY: passwd is a plain C struct of integers and pointers; all-zero is valid.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is its real length.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &raw mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &raw mut result,
            )
        };
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return (rc, None);
        }
        // SAFETY: on success pw_name points into `buf`, NUL-terminated, and `buf` is alive.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        (0, Some(name.to_string_lossy().into_owned()))
    })
}

/// The gid of the group called `name`, if there is one.
pub fn group_id(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    with_nss_buf(|buf| {
        // SAFETY: group is a plain C struct of integers and pointers; all-zero is valid.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is its real length.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &raw mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &raw mut result,
            )
        };
        (rc, (rc == 0 && !result.is_null()).then_some(grp.gr_gid))
    })
}

/// Mounts `source` on `target` as `fstype`, without flags or data (as `mount -t fstype`).
pub fn mount(source: &CStr, target: &CStr, fstype: &CStr) -> io::Result<()> {
    // SAFETY: the three strings are NUL-terminated and outlive the call; no data pointer.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The magic number of the filesystem holding `path` (`statfs(2)` `f_type`).
pub fn fs_magic(path: &CStr) -> io::Result<i64> {
    // SAFETY: all-zero is a valid `statfs`; the kernel fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated; `st` is valid for writes for the call.
    if unsafe { libc::statfs(path.as_ptr(), &raw mut st) } == 0 {
        Ok(st.f_type)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Fills `buf` with bytes from the kernel's CSPRNG: `getrandom(2)`, or `/dev/urandom` where
/// that system call is unavailable (an old kernel, or a seccomp filter that denies it).
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if let Ok(n) = usize::try_from(n) {
            done += n;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::ENOSYS | libc::EPERM) => {
                return File::open(Path::new("/dev/urandom"))
                    .and_then(|mut f| f.read_exact(&mut buf[done..]));
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

/// Nanoseconds on `clock` (0 if the clock cannot be read, which a valid clock id never does).
pub fn clock_ns(clock: clockid_t) -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    if unsafe { libc::clock_gettime(clock, &raw mut ts) } != 0 {
        return 0;
    }
    u128::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u128::try_from(ts.tv_nsec).unwrap_or(0)
}

/// This process's resident memory, from `/proc/self/statm` (pages × page size).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    Some(pages * page)
}

/// The daemon's malloc arenas: glibc gives a thread that meets contention an arena of
/// its own, up to 8 per core, and memory freed into an arena stays there. The daemon's
/// threads hand buffers to each other (event loop → store, audit), so under load the
/// extra arenas held ~11 MiB more RSS (`cargo xtask bench --profile`: anonymous mappings
/// 13.8 → 3.0 MiB) at no measured CPU cost; two keep lock contention low. An operator's
/// `GLIBC_TUNABLES` naming `arena_max` wins. A no-op where the C library is not glibc.
pub fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    if !std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max")) {
        // SAFETY: mallopt only sets an allocator parameter; called before the runtime
        // starts its threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Asks glibc to return free heap memory to the kernel (after a large transient allocation).
/// A no-op where the C library is not glibc.
pub fn malloc_trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// An inotify instance (non-blocking, close-on-exec) watching directories for entries
/// created, removed, renamed or re-owned: how the credential-file watch learns that a file
/// it knows by inode was replaced, before anyone opens the new one.
#[derive(Debug)]
pub struct Inotify(std::os::fd::OwnedFd);

impl Inotify {
    pub fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: no pointers; the returned fd is checked before it is owned.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        Ok(Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches the directory `dir` (a symlink is not followed).
    pub fn watch_dir(&self, dir: &Path) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt as _;
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mask = libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_ATTRIB
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_ONLYDIR
            | libc::IN_DONT_FOLLOW;
        // SAFETY: the fd is ours and `path` is NUL-terminated for the call.
        let wd = unsafe { libc::inotify_add_watch(self.0.as_raw_fd(), path.as_ptr(), mask) };
        if wd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reads and discards every queued event; whether there was any (a queue overflow
    /// counts as one).
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut any = false;
        loop {
            // SAFETY: `buf` is valid for writes of its length for the call.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                any = true;
            } else {
                return any;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn euid_matches_proc() {
        use std::os::unix::fs::MetadataExt as _;
        // /proc/self is owned by the process's effective uid.
        let owner = std::fs::metadata("/proc/self").unwrap().uid();
        assert_eq!(geteuid(), owner);
    }

    #[test]
    fn user_and_group_lookup() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-agentid-test"), None);
        assert_eq!(group_id("nul\0inside"), None);
    }

    #[test]
    fn random_bytes_fill_and_differ() {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        fill_random(&mut a).unwrap();
        fill_random(&mut b).unwrap();
        // 2^-512 chance of a false failure.
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != 0));
        fill_random(&mut []).unwrap();
    }

    #[test]
    fn second_exclusive_lock_is_refused() {
        let path = std::env::temp_dir().join(format!("agentid-sys-lock-{}", std::process::id()));
        let a = File::create(&path).unwrap();
        let b = File::open(&path).unwrap();
        try_lock_exclusive(&a).unwrap();
        let err = try_lock_exclusive(&b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        drop(a);
        try_lock_exclusive(&b).unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn clocks_tick() {
        let a = clock_ns(CLOCK_BOOTTIME);
        let b = clock_ns(CLOCK_BOOTTIME);
        assert!(a > 0 && b >= a);
        // Wall clock is after 2020-01-01.
        assert!(clock_ns(CLOCK_REALTIME) > 1_577_836_800 * 1_000_000_000);
    }
}
