//! `cargo xtask test --kernel K`: the kernel integration tests on another kernel, in QEMU.
//!
//! The guest boots the given kernel with a tiny generated initramfs (busybox-static plus
//! the kernel's own 9p/virtio modules), mounts the host's `/` read-only over virtio-9p,
//! mounts what the tests need on top (proc, sysfs, devtmpfs, cgroup2, bpffs, tracefs, tmpfs
//! for /tmp and /run), brings up loopback and runs the host-built kernel test binary as root
//! in a chroot of that share. The guest prints `AGENTID-GUEST-EXIT=<code>` and powers off;
//! that code is ours. Software emulation (TCG): KVM is not assumed.
//!
//! [`GuestMode::Systemd`] boots a real systemd as PID 1 instead: the host share becomes the
//! read-only lower layer of an overlay whose upper layer is a tmpfs (so systemd, the test
//! and `scripts/install.sh` can write anywhere without touching the host), and the
//! initramfs `switch_root`s into it with a generated unit as systemd's only goal. That unit
//! runs the test binary and powers the guest off; the exit code comes back the same way.
use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Modules the guest needs to mount the host share (with their dependencies), and
/// `overlay` for the systemd guest's writable root.
const GUEST_MODULES: [&str; 4] = ["virtio_pci", "9pnet_virtio", "9p", "overlay"];
/// The unit the systemd guest boots into (written into the overlay by the initramfs).
const CHECK_UNIT: &str = "agentid-guest-check.service";
const MARKER: &str = "AGENTID-GUEST-EXIT=";
const BUSYBOX: &str = "/bin/busybox";

/// A kernel to boot: the image and, when it has loadable modules, their directory.
#[derive(Debug)]
pub(crate) struct Kernel {
    pub vmlinuz: PathBuf,
    pub modules: Option<PathBuf>,
}

/// What to run in the guest.
#[derive(Debug)]
pub(crate) struct GuestRun<'a> {
    pub kernel: &'a Kernel,
    /// The kernel test binary (on the host filesystem, which the guest sees as its root).
    pub test_binary: &'a Path,
    pub test_args: &'a [String],
    /// Extra `NAME=value` for the test's environment.
    pub env: Vec<(String, String)>,
    pub work_dir: &'a Path,
    pub timeout: Duration,
    pub mode: GuestMode,
}

/// How the test binary runs in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuestMode {
    /// From the initramfs shell, in a chroot of the read-only host share.
    Chroot,
    /// As a unit of a real systemd PID 1, on an overlay (tmpfs over the host share).
    Systemd,
}

/// Resolves a vmlinuz path, an extracted package root, a `.deb`, or a Debian package
/// name (fetched with `apt-get download` into `cache`, following a meta-package such as
/// `linux-image-amd64` to the image it depends on).
pub(crate) fn resolve_kernel(spec: &str, cache: &Path) -> anyhow::Result<Kernel> {
    let path = Path::new(spec);
    let is_deb = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("deb"));
    if path.is_file() && is_deb(path) {
        return from_deb(path, cache, 0);
    }
    if path.is_file() {
        let version = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"));
        // `<root>/boot/vmlinuz-V` → `<root>/lib/modules/V` (an extracted package), else the
        // host's own `/lib/modules/V`; neither: the kernel must have 9p/virtio built in.
        let modules = version.and_then(|v| {
            let root = path.parent()?.parent()?;
            [
                root.join("lib/modules").join(v),
                Path::new("/lib/modules").join(v),
            ]
            .into_iter()
            .find(|d| d.join("kernel").is_dir())
        });
        return Ok(Kernel {
            vmlinuz: path.to_owned(),
            modules,
        });
    }
    if path.is_dir() {
        return from_root(path);
    }
    if spec.contains('/')
        || spec.is_empty()
        || !spec
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
    {
        bail!("--kernel {spec}: neither an existing file nor a Debian package name");
    }
    let deb = download(spec, cache)?;
    from_deb(&deb, cache, 0)
}

fn download(package: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let find = || -> anyhow::Result<Option<PathBuf>> {
        for entry in fs::read_dir(&debs)? {
            let p = entry?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let deb = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("deb"));
            if deb && name.starts_with(&format!("{package}_")) {
                return Ok(Some(p));
            }
        }
        Ok(None)
    };
    // Reused once downloaded (delete the cache directory to refresh a meta-package).
    if let Some(deb) = find()? {
        return Ok(deb);
    }
    eprintln!("xtask: apt-get download {package}");
    let fetch = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["download", "-q", package]).current_dir(&debs);
        crate::status(cmd)
    };
    if fetch().is_err() {
        // Package lists missing or stale (a fresh or cleaned machine): refresh once.
        let mut update = Command::new("apt-get");
        update.args(["update", "-qq"]);
        crate::status(update)?;
        fetch().with_context(|| format!("downloading {package}"))?;
    }
    find()?.with_context(|| format!("apt-get download {package} left no .deb"))
}

fn from_deb(deb: &Path, cache: &Path, depth: u32) -> anyhow::Result<Kernel> {
    let stem = deb
        .file_stem()
        .and_then(|s| s.to_str())
        .context("deb file name")?;
    let root = cache.join("extracted").join(stem);
    if !root.join(".done").exists() {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        let mut x = Command::new("dpkg-deb");
        x.arg("-x").arg(deb).arg(&root);
        crate::status(x)?;
        fs::write(root.join(".done"), b"")?;
    }
    if let Ok(k) = from_root(&root) {
        return Ok(k);
    }
    // A meta-package: follow its `linux-image-*` dependency.
    if depth >= 3 {
        bail!("{}: no kernel image found", deb.display());
    }
    let out = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(deb)
        .arg("Depends")
        .output()
        .context("dpkg-deb -f")?;
    let depends = String::from_utf8_lossy(&out.stdout);
    let image = depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or_default())
        .find(|d| d.starts_with("linux-image-"))
        .with_context(|| {
            format!(
                "{}: no vmlinuz and no linux-image dependency",
                deb.display()
            )
        })?;
    from_deb(&download(image, cache)?, cache, depth + 1)
}

fn from_root(root: &Path) -> anyhow::Result<Kernel> {
    let boot = root.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .with_context(|| format!("{}", boot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    let version = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default();
    let modules = root.join("lib/modules").join(version);
    Ok(Kernel {
        vmlinuz,
        modules: modules.join("kernel").is_dir().then_some(modules),
    })
}

/// `GUEST_MODULES` and their dependencies, dependencies first, as file contents (named).
/// Dependencies come from each module's own `.modinfo` (`depends=`), so neither
/// `modules.dep` (packages do not ship it) nor depmod is needed.
fn modules_in_load_order(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = HashMap::new();
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("{}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = module_name(&path) {
                files.insert(name, path);
            }
        }
    }
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let builtin: Vec<String> = builtin
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect();
    let mut order = Vec::new();
    let mut pending: Vec<(String, bool)> = GUEST_MODULES
        .iter()
        .rev()
        .map(|m| ((*m).to_owned(), false))
        .collect();
    // Depth-first, dependencies before dependents.
    while let Some((name, deps_done)) = pending.pop() {
        if order.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let Some(path) = files.get(&name) else {
            if builtin.contains(&name) {
                continue;
            }
            bail!(
                "module {name}: not in {} and not built in: this kernel cannot mount the host \
                 share over virtio-9p (Debian's -cloud- flavour has no 9p; use the standard \
                 flavour, e.g. linux-image-amd64)",
                dir.display()
            );
        };
        let bytes = module_bytes(path)?;
        if deps_done {
            order.push((name, bytes));
            continue;
        }
        pending.push((name, true));
        for dep in modinfo_depends(&bytes) {
            if !order.iter().any(|(n, _)| *n == dep) {
                pending.push((dep, false));
            }
        }
    }
    Ok(order)
}

/// `9pnet_virtio` for `.../9pnet_virtio.ko[.xz]` (kernel names use `_` for `-`).
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let (stem, _) = file.split_once(".ko")?;
    Some(stem.replace('-', "_"))
}

/// The `depends=` list of a module's `.modinfo` section.
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// A module file as the guest's busybox `insmod` takes it (decompressed).
fn module_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("{}", path.display())),
        Some(t) => {
            let out = Command::new(t)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("{t} -dc {}", path.display()))?;
            if !out.status.success() {
                bail!("{t} -dc {} failed", path.display());
            }
            Ok(out.stdout)
        }
    }
}

/// `mount` arguments for the host share. msize: 9p's 8 KiB default makes reading the
/// (large, debug) test binary crawl.
const NINEP: &str = "-t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot";
/// After a root mount: a guest that cannot mount its root reports and stops.
const FAIL: &str =
    "|| { echo 'guest: mounting the root failed'; echo AGENTID-GUEST-EXIT=125; poweroff -f; }";

/// Single-quoted for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn init_script(run: &GuestRun<'_>, modules: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs dev /dev\n",
    );
    for m in modules {
        let _ = writeln!(s, "insmod /modules/{m} || echo 'guest: insmod {m} failed'");
    }
    s.push_str("R=/newroot\n");
    if run.mode == GuestMode::Systemd {
        // systemd mounts /proc, /sys, /dev, /run, cgroup2, bpffs and tracefs itself, as on
        // any host; the initramfs only provides the root and the goal unit. And keeps /tmp:
        // Debian's tmp.conf (`D /tmp`) would empty it at boot, a checkout or target dir
        // under /tmp with it (in the overlay only, but the test binary is there), and
        // whiting out every file over 9p takes minutes.
        let _ = write!(
            s,
            "mkdir -p /lower /rw\n\
             mount {NINEP} /lower {FAIL}\n\
             mount -t tmpfs -o mode=0755 tmpfs /rw\n\
             mkdir -p /rw/upper /rw/work\n\
             mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work $R {FAIL}\n\
             cp /{CHECK_UNIT} $R/etc/systemd/system/{CHECK_UNIT}\n\
             mkdir -p $R/etc/tmpfiles.d\n\
             printf 'd /tmp 1777 root root -\\nd /var/tmp 1777 root root -\\n' > $R/etc/tmpfiles.d/tmp.conf\n\
             echo \"guest: kernel $(uname -r), booting systemd\"\n\
             exec switch_root $R /lib/systemd/systemd --unit={CHECK_UNIT}\n"
        );
        return s;
    }
    // The writable scratch space is a tmpfs on /var/tmp (TMPDIR), not on /tmp: a checkout
    // under /tmp (CI clones often are) must stay visible, test binary and workload alike.
    let _ = write!(
        s,
        "mount {NINEP} $R {FAIL}\n\
         mount -t proc proc $R/proc\n\
         mount -t sysfs sysfs $R/sys\n\
         mount -t devtmpfs dev $R/dev\n\
         mkdir -p $R/dev/shm $R/dev/pts 2>/dev/null\n\
         mount -t tmpfs tmpfs $R/dev/shm\n\
         mount -t devpts devpts $R/dev/pts\n\
         mount -t cgroup2 cgroup2 $R/sys/fs/cgroup\n\
         mount -t bpf bpf $R/sys/fs/bpf\n\
         mount -t tracefs tracefs $R/sys/kernel/tracing\n\
         mount -t tmpfs tmpfs $R/var/tmp\n\
         mount -t tmpfs tmpfs $R/run\n\
         ip link set lo up\n\
         echo \"guest: kernel $(uname -r), running the tests\"\n"
    );
    let _ = writeln!(
        s,
        "chroot $R /usr/bin/env -i {} 2>&1\nrc=$?",
        test_command(run)
    );
    s.push_str(
        "echo AGENTID-GUEST-EXIT=$rc\n\
         sync\n\
         poweroff -f\n\
         echo o > /proc/sysrq-trigger\n",
    );
    s
}

/// The test binary with its environment and arguments, as `env` takes them.
fn test_command(run: &GuestRun<'_>) -> String {
    let mut cmd = String::from(
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
         HOME=/root TMPDIR=/var/tmp AGENTID_REQUIRE_BPF=1 RUST_BACKTRACE=1",
    );
    for (k, v) in &run.env {
        let _ = write!(cmd, " {}", sh_quote(&format!("{k}={v}")));
    }
    let _ = write!(cmd, " {}", sh_quote(&run.test_binary.to_string_lossy()));
    for a in run.test_args {
        let _ = write!(cmd, " {}", sh_quote(a));
    }
    cmd
}

/// systemd's goal in the systemd guest: after `basic.target` (so the rest of the boot is
/// a host's ordinary one), run the test binary on the console, print its exit code and
/// power off whatever happens (`FailureAction` covers a unit that cannot even start).
fn check_unit(run: &GuestRun<'_>) -> String {
    let script = format!(
        "/usr/bin/env -i {} 2>&1; echo AGENTID-GUEST-EXIT=$?",
        test_command(run)
    );
    format!(
        "[Unit]\n\
         Description=agentid guest check\n\
         After=basic.target\n\
         SuccessAction=poweroff-force\n\
         FailureAction=poweroff-force\n\
         [Service]\n\
         Type=oneshot\n\
         StandardInput=null\n\
         StandardOutput=tty\n\
         StandardError=tty\n\
         TTYPath=/dev/ttyS0\n\
         ExecStart=/bin/sh -c {}\n",
        systemd_quote(&script)
    )
}

/// One `ExecStart=` argument: double-quoted, with `\`, `"`, `%` and `$` escaped for
/// systemd (so the shell, not systemd, expands `$?`).
fn systemd_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Minimal `newc` cpio writer: the initramfs format.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let filesize = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, 1, 0, filesize, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[], (0, 0));
    }
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | mode, data, (0, 0));
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}

fn build_initramfs(run: &GuestRun<'_>) -> anyhow::Result<PathBuf> {
    let busybox = fs::read(BUSYBOX)
        .with_context(|| format!("{BUSYBOX} (busybox-static; scripts/setup.sh installs it)"))?;
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        cpio.dir(d);
    }
    // The console node must exist before init runs, or init has no stdout.
    cpio.entry("dev/console", 0o020_600, &[], (5, 1));
    cpio.file("bin/busybox", 0o755, &busybox);
    let mut names = Vec::new();
    if let Some(dir) = &run.kernel.modules {
        for (i, (module, bytes)) in modules_in_load_order(dir)?.into_iter().enumerate() {
            let name = format!("{i:02}-{module}.ko");
            cpio.file(&format!("modules/{name}"), 0o644, &bytes);
            names.push(name);
        }
    }
    cpio.file("init", 0o755, init_script(run, &names).as_bytes());
    if run.mode == GuestMode::Systemd {
        cpio.file(CHECK_UNIT, 0o644, check_unit(run).as_bytes());
    }
    let path = run.work_dir.join("initramfs.cpio");
    fs::write(&path, cpio.finish()).with_context(|| format!("{}", path.display()))?;
    Ok(path)
}

/// QEMU under TCG with the host's root shared read-only over 9p, the console on stdio.
fn qemu_command(run: &GuestRun<'_>, initramfs: &Path) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine",
        "q35",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "2048",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-append",
        "console=ttyS0 panic=-1 rdinit=/init loglevel=4",
    ])
    .arg("-kernel")
    .arg(&run.kernel.vmlinuz)
    .arg("-initrd")
    .arg(initramfs)
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    qemu
}

/// Boots the guest, streams its console (also to `console.log`), returns the guest test
/// binary's exit code.
pub(crate) fn run_guest(run: &GuestRun<'_>) -> anyhow::Result<i32> {
    fs::create_dir_all(run.work_dir)?;
    let initramfs = build_initramfs(run)?;
    let log_path = run.work_dir.join("console.log");
    let mut log = fs::File::create(&log_path)?;
    let mut qemu = qemu_command(run, &initramfs);
    eprintln!(
        "xtask: booting {} under QEMU (TCG, 2 vCPUs, 2 GiB); console: {}",
        run.kernel.vmlinuz.display(),
        log_path.display()
    );
    let mut child = qemu.spawn().context("spawning qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + run.timeout;
    let mut code = None;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                println!("guest| {line}");
                // Under systemd, its status lines share the console: the marker may not
                // start the line.
                if let Some((_, c)) = line.split_once(MARKER) {
                    code = c
                        .split(|ch: char| !ch.is_ascii_digit() && ch != '-')
                        .next()
                        .and_then(|c| c.parse::<i32>().ok());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "guest timed out after {:?} (console: {})",
                    run.timeout,
                    log_path.display()
                );
            }
        }
    }
    let st = child.wait()?;
    code.with_context(|| {
        format!(
            "guest ended ({st}) without reporting a test result; console: {}",
            log_path.display()
        )
    })
}
