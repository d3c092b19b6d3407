//! The sensor: loads and attaches the kernel programs, and turns ring-buffer records into
//! typed [`Event`]s. Programs stay attached exactly as long as the [`Sensor`] lives.
pub mod decode;
mod enforce;
mod fill;
mod kernel;
pub mod pins;
pub mod reassemble;
pub mod request;
mod tls;

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use agentid_ebpf::{CONFIG_GLOBAL, DROPS_MAP, EVENTS_MAP, OPEN_CGROUPS_MAP, SELF_MAP, kind};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, RawTracePoint,
        TracePoint, UProbe,
        links::{FdLink, PinnedLink},
    },
};
use tokio::io::unix::AsyncFd;

pub use decode::{Clock, DecodeError, Decoder, decode};
pub use tls::{TlsTarget, is_tls_library};

use crate::{cgroup, event::Event};

/// The compiled kernel programs (empty when built without bpf-linker).
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agentid-probes"));

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("loading eBPF programs needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN); run as root")]
    NotRoot,
    #[error(
        "this agentid binary was built without its eBPF programs (bpf-linker was missing); \
         run `scripts/setup.sh` (or `cargo xtask setup`) and rebuild"
    )]
    NotBuilt,
    #[error("kernel BTF: {0}")]
    Btf(String),
    #[error("tracefs: {0}")]
    Tracefs(String),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("loading eBPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {detail}")]
    Map { name: &'static str, detail: String },
    #[error("pinning under {dir}: {detail}")]
    Pin { dir: PathBuf, detail: String },
    #[error("reading the ring buffer: {0}")]
    Io(#[from] std::io::Error),
}

/// Per-kind counters, indexed by the ABI kind number.
pub type KindCounts = [u64; kind::COUNT as usize];

#[derive(Debug, Clone, Default)]
pub struct SensorOptions {
    /// The process whose own activity the kernel drops (default: this process).
    pub self_tgid: Option<u32>,
    /// How long names learned from the agents' DNS are held.
    pub dns: crate::dns::DnsOptions,
    /// Pin the programs and maps under this directory (see [`pins`]), resuming a set a
    /// killed daemon left there. `None`: nothing outlives this sensor.
    pub pin_dir: Option<PathBuf>,
    /// The ring buffer's size in bytes (see [`ring_bytes`]); `None`: [`DEFAULT_RING_BYTES`].
    /// A resumed pinned set keeps the size it was created with.
    pub ring_bytes: Option<u32>,
}

/// The ring buffer's default size. Its data pages are mapped twice (the kernel maps them
/// back to back so a record can wrap), so they count twice in the daemon's RSS: the ring
/// should be what the reader needs and no more. The reader drains it at least every 10 ms
/// while records flow; the 10,000 processes/s storm (20,000 records/s) peaks at a few
/// hundred KiB, an exec storm (5.4 KiB per exec) at ~1,500 execs/s fills ~8 MiB/s. 4 MiB
/// holds ~0.5 s of the exec storm or ~50k connect records: a reader stalled that long
/// under the heaviest storm still loses nothing, and a longer stall is a telemetry gap.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
/// Bounds of the configurable size: the smallest still holds a few dozen exec records with
/// their argument chunks; the largest is far beyond any need.
const RING_BYTES_MIN: u64 = 256 << 10;
const RING_BYTES_MAX: u64 = 1 << 30;

/// Checks a ring buffer size: the kernel takes a power of two that is a multiple of the
/// page size; the bounds keep it useful.
pub fn ring_bytes(bytes: u64) -> Result<u32, String> {
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if !bytes.is_power_of_two() || !bytes.is_multiple_of(page) {
        return Err(format!(
            "{bytes} bytes: must be a power of two and a multiple of the page size ({page})"
        ));
    }
    if !(RING_BYTES_MIN..=RING_BYTES_MAX).contains(&bytes) {
        return Err(format!(
            "{bytes} bytes: must be between {} KiB and {} MiB",
            RING_BYTES_MIN >> 10,
            RING_BYTES_MAX >> 20
        ));
    }
    u32::try_from(bytes).map_err(|e| e.to_string())
}

/// How the sensor's programs came to be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Loaded now, nothing pinned (pinning off, or the kernel cannot pin a link).
    Unpinned,
    /// Loaded now and pinned: a kill leaves them recording.
    Pinned,
    /// A pinned set left by a previous daemon (killed or crashed), still recording: what
    /// it recorded meanwhile is in the ring buffer.
    Resumed,
}

/// Maps pinned beside the links: what a resumed daemon reads or writes.
const PINNED_MAPS: [&str; 13] = [
    EVENTS_MAP,
    DROPS_MAP,
    OPEN_CGROUPS_MAP,
    SELF_MAP,
    enforce::MAPS[0],
    enforce::MAPS[1],
    enforce::MAPS[2],
    enforce::MAPS[3],
    enforce::MAPS[4],
    enforce::MAPS[5],
    enforce::MAPS[6],
    enforce::MAPS[7],
    enforce::MAPS[8],
];

/// Attached kernel programs and the ring buffer they write to.
pub struct Sensor {
    // Field order matters for drop: the ring buffer before the Ebpf that owns the programs.
    ring: AsyncFd<RingBuf<MapData>>,
    /// The ring's positions, for its fill (`None`: the kernel refused the mapping).
    fill: Option<fill::RingFill>,
    drops: PerCpuArray<MapData, u64>,
    open_cgroups: aya::maps::HashMap<MapData, u64, u8>,
    enforce: enforce::EnforceMaps,
    /// Links of a pinned set (held; the pins keep the programs attached).
    _links: Vec<PinnedLink>,
    /// `None` for a resumed set: its programs are held by their pinned links.
    ebpf: Option<Ebpf>,
    /// A resumed set's TLS uprobe programs, from their pins (a fresh set's are in `ebpf`):
    /// uprobe attachments are made per library file, so they are made again at each start.
    resumed_uprobes: tls::ResumedUprobes,
    tls: tls::TlsAttacher,
    pins: Option<pins::PinSet>,
    origin: Origin,
    decoder: Decoder,
    received: KindCounts,
    decode_errors: u64,
    /// When the last read returned records (drives timer polling, see `next_events`).
    last_read: Option<Instant>,
    /// The ring buffer's size (a resumed set's may differ from the configured one).
    ring_bytes: u64,
    /// The most unread bytes seen before a read: how close the ring came to full.
    ring_peak: u64,
}

/// Any exit that runs destructors (an error, a panic that unwinds) is no kill: the pinned
/// set goes with it. Only a process that dies without them (SIGKILL, abort, power loss)
/// leaves the programs recording for the next start.
impl Drop for Sensor {
    fn drop(&mut self) {
        self.unpin();
    }
}

impl std::fmt::Debug for Sensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sensor")
            .field("received", &self.received)
            .field("decode_errors", &self.decode_errors)
            .finish_non_exhaustive()
    }
}

/// Hands the heap freed by loading back to the kernel. Parsing the kernel's BTF (ours for
/// struct offsets, aya's for relocations) peaks at ~50 MiB of small allocations that are
/// all freed by now, but glibc keeps freed memory inside the heap: without this the daemon
/// would carry it as resident memory for its whole life.
fn release_freed_heap() {
    crate::sys::malloc_trim();
}

/// Tracks [`Sensor::ring_peak`]: each read drains the ring, so the backlog just before
/// one is the most that waited since the last (two loads per read, not per record).
struct Peak<'a> {
    fill: Option<&'a fill::RingFill>,
    max: &'a mut u64,
}

impl Peak<'_> {
    fn sample(&mut self) {
        if let Some(f) = self.fill {
            *self.max = (*self.max).max(f.used_bytes());
        }
    }
}

/// Timer poll while records flow: a record submitted without a wakeup waits at most this.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// Quiet time after which the reader waits for a wakeup only. Four times the programs'
/// `WAKE_EVERY_NS`: once a CPU has not asked for a wakeup within that interval, its next
/// record asks for one, so nothing can be left unread.
const IDLE_AFTER: Duration = Duration::from_millis(4 * agentid_ebpf::WAKE_EVERY_NS / 1_000_000);
/// How often a sleeping reader looks anyway (see `next_events`).
const IDLE_LOOK: Duration = Duration::from_millis(100);

/// Tracepoints attached by category/name (fixed syscall layouts). `openat2` is not among
/// them: attaching its pair made the reader stop receiving records mid-burst on Linux 6.18
/// (`completeness_10k_connects_1k_execs`), not yet understood.
const TRACEPOINTS: [(&str, &str); 6] = [
    ("syscalls", "sys_enter_openat"),
    ("syscalls", "sys_exit_openat"),
    ("syscalls", "sys_enter_open"),
    ("syscalls", "sys_exit_open"),
    ("syscalls", "sys_enter_socket"),
    ("syscalls", "sys_exit_socket"),
];
/// Raw tracepoints (kernel pointers read with BTF offsets).
const RAW_TRACEPOINTS: [&str; 4] = [
    "sched_process_exec",
    "sched_process_fork",
    "sched_process_exit",
    "cgroup_mkdir",
];
/// cgroup socket-address hooks, attached at the cgroup v2 root.
const SOCK_HOOKS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
/// cgroup packet hooks, attached at the cgroup v2 root: the DNS of watched cgroups.
const SKB_HOOKS: [(&str, CgroupSkbAttachType); 2] = [
    ("dns_egress", CgroupSkbAttachType::Egress),
    ("dns_ingress", CgroupSkbAttachType::Ingress),
];

/// Takes the link `id` out of its program as an [`FdLink`] (which can be pinned). A link
/// the kernel made without a `bpf_link` (perf events before 5.15, cgroup hooks before 5.7)
/// cannot: then the whole set is loaded again unpinned.
macro_rules! take_fd_link {
    ($prog:expr, $id:expr, $name:expr, $out:expr) => {
        if let Some(out) = $out.as_mut() {
            let link = $prog
                .take_link($id)
                .map_err(|source| SensorError::Program {
                    name: $name,
                    source,
                })?;
            let link = FdLink::try_from(link).map_err(|e| SensorError::Pin {
                dir: PathBuf::new(),
                detail: format!("{}: the kernel made no pinnable link ({e})", $name),
            })?;
            out.push(($name, link));
        }
    };
}

/// Loads and attaches every program: tracepoints, raw tracepoints, and the cgroup socket
/// hooks at the cgroup v2 root. With `links`, every link is taken out of its program into
/// it, to be pinned: a program added here is pinned like the others.
fn attach_all(ebpf: &mut Ebpf, mut links: Option<&mut Vec<pins::Link>>) -> Result<(), SensorError> {
    for (category, name) in TRACEPOINTS {
        let prog: &mut TracePoint = program(ebpf, name)?;
        prog.load()
            .map_err(|source| SensorError::Program { name, source })?;
        let id = prog
            .attach(category, name)
            .map_err(|source| SensorError::Program { name, source })?;
        take_fd_link!(prog, id, name, links);
    }
    for name in RAW_TRACEPOINTS {
        let prog: &mut RawTracePoint = program(ebpf, name)?;
        prog.load()
            .map_err(|source| SensorError::Program { name, source })?;
        let id = prog
            .attach(name)
            .map_err(|source| SensorError::Program { name, source })?;
        take_fd_link!(prog, id, name, links);
    }
    let root = cgroup::v2_root()?;
    let root_fd = File::open(&root).map_err(|source| cgroup::CgroupError::Io {
        path: root.clone(),
        source,
    })?;
    for name in SOCK_HOOKS {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        prog.load()
            .map_err(|source| SensorError::Program { name, source })?;
        // AllowMultiple so other tools' hooks keep working. aya turns it into the
        // BPF_F_ALLOW_MULTI flag on bpf_link_create, which newer kernels reject with
        // EINVAL for cgroup links; such links are always multi-attach, so retry without.
        let id = match prog.attach(&root_fd, CgroupAttachMode::AllowMultiple) {
            Ok(id) => id,
            Err(_) => prog
                .attach(&root_fd, CgroupAttachMode::Single)
                .map_err(|source| SensorError::Program { name, source })?,
        };
        take_fd_link!(prog, id, name, links);
    }
    for (name, attach_type) in SKB_HOOKS {
        let prog: &mut CgroupSkb = program(ebpf, name)?;
        prog.load()
            .map_err(|source| SensorError::Program { name, source })?;
        // As for the socket hooks: multi-attach, or what the kernel accepts for links.
        let id = match prog.attach(&root_fd, attach_type, CgroupAttachMode::AllowMultiple) {
            Ok(id) => id,
            Err(_) => prog
                .attach(&root_fd, attach_type, CgroupAttachMode::Single)
                .map_err(|source| SensorError::Program { name, source })?,
        };
        take_fd_link!(prog, id, name, links);
    }
    for name in UPROBES {
        let prog: &mut UProbe = program(ebpf, name)?;
        prog.load()
            .map_err(|source| SensorError::Program { name, source })?;
    }
    Ok(())
}

/// Entry uprobes on TLS libraries: loaded here, attached per library file by
/// [`tls::TlsAttacher`]; in a pinned set the programs (not their attachments) are pinned.
const UPROBES: [&str; 2] = [tls::WRITE_PROGRAM, tls::H2_PROGRAM];

fn missing(name: &'static str) -> SensorError {
    SensorError::Map {
        name,
        detail: "missing".into(),
    }
}

/// Loaded programs and the maps the sensor uses, by name.
struct Loaded {
    ebpf: Option<Ebpf>,
    resumed_uprobes: tls::ResumedUprobes,
    maps: Vec<(&'static str, Map)>,
    links: Vec<PinnedLink>,
    origin: Origin,
}

/// Loads the programs and attaches them; with `pin`, pins links and maps under it.
fn load_fresh(
    config: &agentid_ebpf::Config,
    ring_bytes: u32,
    pin: Option<&pins::PinSet>,
) -> Result<Loaded, SensorError> {
    let mut ebpf = EbpfLoader::new()
        .override_global(CONFIG_GLOBAL, config, true)
        .map_max_entries(EVENTS_MAP, ring_bytes)
        .load(PROGRAMS)?;
    let mut links = pin.map(|_| Vec::new());
    attach_all(&mut ebpf, links.as_mut())?;
    let maps = PINNED_MAPS
        .iter()
        .map(|name| {
            ebpf.take_map(name)
                .map(|m| (*name, m))
                .ok_or_else(|| missing(name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (links, origin) = match (pin, links) {
        (Some(set), Some(links)) => {
            let mut uprobes = Vec::with_capacity(UPROBES.len());
            for (name, prog) in ebpf.programs_mut() {
                if let Some(&name) = UPROBES.iter().find(|n| **n == name) {
                    let prog: &mut UProbe = prog
                        .try_into()
                        .map_err(|source| SensorError::Program { name, source })?;
                    uprobes.push((name, prog));
                }
            }
            (set.pin(links, &maps, &mut uprobes)?, Origin::Pinned)
        }
        _ => (Vec::new(), Origin::Unpinned),
    };
    Ok(Loaded {
        ebpf: Some(ebpf),
        resumed_uprobes: tls::ResumedUprobes::default(),
        maps,
        links,
        origin,
    })
}

/// Resumes the pinned set under `set` if a whole one is there, else loads and pins anew;
/// a kernel that cannot pin gets the programs unpinned (said in the log).
fn load_pinned(
    config: &agentid_ebpf::Config,
    ring_bytes: u32,
    set: &pins::PinSet,
) -> Result<Loaded, SensorError> {
    if let Some(resumed) = set.resume(&Sensor::linked_program_names(), &PINNED_MAPS, &UPROBES)? {
        return Ok(Loaded {
            ebpf: None,
            resumed_uprobes: tls::ResumedUprobes(resumed.uprobes),
            maps: resumed.maps,
            links: resumed.links,
            origin: Origin::Resumed,
        });
    }
    match load_fresh(config, ring_bytes, Some(set)) {
        Err(SensorError::Pin { dir, detail }) => {
            tracing::warn!(
                dir = %set.dir().display(),
                "cannot pin the probes ({detail}{}); running unpinned: a kill of the daemon \
                 leaves a blind window until the next start",
                if dir.as_os_str().is_empty() { String::new() } else { format!(" at {}", dir.display()) }
            );
            let _ = set.remove();
            load_fresh(config, ring_bytes, None)
        }
        other => other,
    }
}

/// The ring buffer's size as the kernel made it: a resumed set keeps the size it was
/// pinned with, whatever is configured now.
fn made_ring_bytes(ring: &Map, configured: u32, origin: Origin) -> Result<u64, SensorError> {
    let made = match ring {
        Map::RingBuf(data) => data
            .info()
            .map(|i| u64::from(i.max_entries()))
            .map_err(|e| SensorError::Map {
                name: EVENTS_MAP,
                detail: e.to_string(),
            })?,
        _ => u64::from(configured),
    };
    if origin == Origin::Resumed && made != u64::from(configured) {
        tracing::info!(
            ring_bytes = made,
            "the resumed ring buffer keeps its size; the configured size applies from the next \
             start after a clean stop"
        );
    }
    Ok(made)
}

impl Sensor {
    /// Loads and attaches every program. Must run inside a tokio runtime.
    pub fn load(opts: &SensorOptions) -> Result<Self, SensorError> {
        if crate::sys::geteuid() != 0 {
            return Err(SensorError::NotRoot);
        }
        if PROGRAMS.is_empty() {
            return Err(SensorError::NotBuilt);
        }
        let self_tgid = opts.self_tgid.unwrap_or_else(std::process::id);
        let mut config = kernel::probe_config()?;
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        config.learn_min_hold_s = secs(opts.dns.min_hold);
        config.learn_grace_s = secs(opts.dns.grace);
        let ring_bytes = match opts.ring_bytes {
            Some(n) => ring_bytes(u64::from(n)).map_err(|detail| SensorError::Map {
                name: EVENTS_MAP,
                detail,
            })?,
            None => DEFAULT_RING_BYTES,
        };
        kernel::tracefs()?;
        let set = opts
            .pin_dir
            .as_deref()
            .map(|base| pins::PinSet::new(base, PROGRAMS));
        let loaded = match &set {
            Some(set) => load_pinned(&config, ring_bytes, set)?,
            None => load_fresh(&config, ring_bytes, None)?,
        };
        let Loaded {
            mut ebpf,
            mut resumed_uprobes,
            mut maps,
            links,
            origin,
        } = loaded;
        let mut take = |name: &'static str| {
            maps.iter()
                .position(|(n, _)| *n == name)
                .map(|i| maps.swap_remove(i).1)
                .ok_or_else(|| missing(name))
        };
        let map_err = |name: &'static str| {
            move |e: aya::maps::MapError| SensorError::Map {
                name,
                detail: e.to_string(),
            }
        };
        let ring = take(EVENTS_MAP)?;
        let ring_bytes = made_ring_bytes(&ring, ring_bytes, origin)?;
        let ring = RingBuf::try_from(ring).map_err(map_err(EVENTS_MAP))?;
        let drops = PerCpuArray::try_from(take(DROPS_MAP)?).map_err(map_err(DROPS_MAP))?;
        let open_cgroups = aya::maps::HashMap::try_from(take(OPEN_CGROUPS_MAP)?)
            .map_err(map_err(OPEN_CGROUPS_MAP))?;
        let enforce = enforce::EnforceMaps::take(&mut take)?;
        let mut me: Array<MapData, u32> =
            Array::try_from(take(SELF_MAP)?).map_err(map_err(SELF_MAP))?;
        // From here on the kernel skips this process, whoever loaded the programs.
        me.set(0, self_tgid, 0).map_err(map_err(SELF_MAP))?;
        let pins = set.filter(|_| origin != Origin::Unpinned);
        tracing::debug!(fd = ring.as_raw_fd(), ?config, ?origin, "sensor attached");
        let fill = fill::RingFill::map(ring.as_raw_fd())
            .inspect_err(|e| tracing::warn!(error = %e, "ring buffer fill not available"))
            .ok();
        if let Some(set) = &pins {
            // The path in the message: test harnesses find the set there to clean it up.
            tracing::info!("probes pinned at {} ({origin:?})", set.dir().display());
        }
        // SAFETY: the RingBuf owns its map fd, which stays open (and is never replaced)
        // for as long as the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        let mut tls = tls::TlsAttacher::default();
        match ebpf.as_mut() {
            Some(ebpf) => tls.attach_system(ebpf),
            None => tls.attach_system(&mut resumed_uprobes),
        }
        release_freed_heap();
        Ok(Self {
            ring,
            fill,
            drops,
            open_cgroups,
            enforce,
            _links: links,
            ebpf,
            resumed_uprobes,
            tls,
            pins,
            origin,
            decoder: Decoder::with_dns(Clock::now(), opts.dns),
            received: KindCounts::default(),
            decode_errors: 0,
            last_read: None,
            ring_bytes,
            ring_peak: 0,
        })
    }

    /// Waits until records are available, then appends every available one to `out`.
    pub async fn next_events(&mut self, out: &mut Vec<Event>) -> Result<(), SensorError> {
        let start = out.len();
        let Self {
            ring,
            fill,
            decoder,
            received,
            decode_errors,
            last_read,
            ring_peak,
            ..
        } = self;
        let mut peak = Peak {
            fill: fill.as_ref(),
            max: ring_peak,
        };
        loop {
            // The programs skip most wakeups while records flow (`WAKE_EVERY_NS`), so the
            // reader polls on a timer until it has read nothing for `IDLE_AFTER`. Before it
            // then sleeps until a wakeup, it looks once more: a record submitted without a
            // wakeup after the last read would otherwise wait for ever, since the kernel
            // wakes the reader only when it had caught up. Once that look finds nothing,
            // every CPU's next record asks for a wakeup (its last one is older than
            // `WAKE_EVERY_NS`), so sleeping is safe.
            let polling = last_read.is_some_and(|at| at.elapsed() < IDLE_AFTER);
            if !polling {
                let read = Self::drain_ring(
                    ring.get_mut(),
                    decoder,
                    received,
                    decode_errors,
                    out,
                    &mut peak,
                );
                if read > 0 {
                    *last_read = Some(Instant::now());
                }
                if out.len() > start {
                    return Ok(());
                }
                if read > 0 {
                    // Only chunks so far: their exec record may have been submitted
                    // without a wakeup, so keep polling instead of sleeping.
                    continue;
                }
            }
            // Asleep, it still looks every `IDLE_LOOK`: a lost wakeup must cost a tenth of
            // a second, never the records that wait behind it (a `trace` on a quiet host
            // was seen waiting for ever).
            let wait = if polling { POLL_EVERY } else { IDLE_LOOK };
            let ready = tokio::time::timeout(wait, ring.readable_mut()).await.ok();
            let read = match ready {
                Some(guard) => {
                    let mut guard = guard?;
                    let read = Self::drain_ring(
                        guard.get_inner_mut(),
                        decoder,
                        received,
                        decode_errors,
                        out,
                        &mut peak,
                    );
                    // Only clears if no new readiness arrived since the guard was taken.
                    guard.clear_ready();
                    read
                }
                None => Self::drain_ring(
                    ring.get_mut(),
                    decoder,
                    received,
                    decode_errors,
                    out,
                    &mut peak,
                ),
            };
            // Any record read counts, chunks included: a read of chunks only is followed
            // by their exec record, which may come without a wakeup.
            if read > 0 {
                *last_read = Some(Instant::now());
            }
            if out.len() > start {
                return Ok(());
            }
        }
    }

    /// Appends every record available right now, without waiting.
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        let Self {
            ring,
            decoder,
            received,
            decode_errors,
            last_read,
            fill,
            ring_peak,
            ..
        } = self;
        let mut peak = Peak {
            fill: fill.as_ref(),
            max: ring_peak,
        };
        if Self::drain_ring(
            ring.get_mut(),
            decoder,
            received,
            decode_errors,
            out,
            &mut peak,
        ) > 0
        {
            // A read like any other: `next_events` keeps polling after it.
            *last_read = Some(Instant::now());
        }
    }

    fn drain_ring(
        ring: &mut RingBuf<MapData>,
        decoder: &mut Decoder,
        received: &mut KindCounts,
        decode_errors: &mut u64,
        out: &mut Vec<Event>,
        peak: &mut Peak<'_>,
    ) -> usize {
        peak.sample();
        let mut read = 0;
        while let Some(item) = ring.next() {
            read += 1;
            match decoder.decode(&item) {
                Ok(Some(event)) => {
                    if let Some(n) = received.get_mut(event.kind.abi() as usize) {
                        *n += 1;
                    }
                    out.push(event);
                }
                Ok(None) => {
                    // A chunk or a DNS record: counted under its own kind.
                    let k = item
                        .get(..4)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map_or(kind::EXEC_CHUNK, u32::from_ne_bytes);
                    if let Some(n) = received.get_mut(k as usize) {
                        *n += 1;
                    }
                }
                Err(e) => {
                    *decode_errors += 1;
                    tracing::warn!(error = %e, "undecodable kernel record");
                }
            }
        }
        read
    }

    /// Reports file opens in this cgroup from now on (agents' credential files).
    pub fn watch_opens(&mut self, cgroup_id: u64) -> Result<(), SensorError> {
        self.open_cgroups
            .insert(cgroup_id, 1, 0)
            .map_err(|e| SensorError::Map {
                name: OPEN_CGROUPS_MAP,
                detail: e.to_string(),
            })
    }

    /// Makes the kernel enforce `plan` for the agents' cgroups `cgroups` (id → policy id,
    /// from a walk whose highest cgroup id was `newest`), with `resolvers` as the host's
    /// resolvers.
    pub fn apply_enforcement(
        &mut self,
        plan: &crate::enforce::Plan,
        cgroups: &std::collections::BTreeMap<u64, u32>,
        newest: u64,
        resolvers: &[std::net::IpAddr],
    ) -> Result<(), SensorError> {
        self.enforce.apply(plan, cgroups, newest, resolvers)
    }

    /// Puts process `tgid` under the enforced policy `policy` wherever it goes.
    pub fn tag_enforced(&mut self, tgid: u32, policy: u32) -> Result<(), SensorError> {
        self.enforce.tag(tgid, policy)
    }

    /// How the programs came to be attached (resumed: a previous daemon's pinned set).
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// A clean stop: removes the pinned set, so the programs detach with this sensor and
    /// nothing records while no daemon runs. Without it (killed, crashed) they stay.
    pub fn unpin(&mut self) {
        if let Some(set) = self.pins.take() {
            match set.remove() {
                Ok(()) => tracing::info!(pin_dir = %set.dir().display(), "probes unpinned"),
                Err(e) => tracing::warn!(error = %e, "cannot unpin the probes"),
            }
        }
    }

    /// Lets go of the programs as a killed process would: the pinned set stays, recording,
    /// for the next [`Sensor::load`] on the same pin dir to resume.
    pub fn leave_pinned(mut self) {
        self.pins = None;
    }

    /// Every program the sensor attaches, by name.
    pub fn program_names() -> Vec<&'static str> {
        let mut names = Self::linked_program_names();
        names.extend(UPROBES);
        names
    }

    /// The programs attached once, by one link each (what a pinned set pins as links).
    fn linked_program_names() -> Vec<&'static str> {
        TRACEPOINTS
            .iter()
            .map(|(_, n)| *n)
            .chain(RAW_TRACEPOINTS)
            .chain(SOCK_HOOKS)
            .chain(SKB_HOOKS.iter().map(|(n, _)| *n))
            .collect()
    }

    /// Puts the TLS request probes on the libraries process `pid` maps and on its
    /// executable, where not done yet (a registered agent's own copies).
    pub fn watch_tls_of(&mut self, pid: u32) {
        let Self {
            ebpf,
            resumed_uprobes,
            tls,
            ..
        } = self;
        match ebpf.as_mut() {
            Some(ebpf) => tls.attach_process(ebpf, pid),
            None => tls.attach_process(resumed_uprobes, pid),
        }
    }

    /// The files the TLS request probes went to, with any failure.
    pub fn tls_targets(&self) -> &[TlsTarget] {
        self.tls.targets()
    }

    /// Records received and decoded, per kind.
    pub fn received(&self) -> KindCounts {
        self.received
    }

    /// Bytes in the ring buffer not read yet, and the ring's size; `None` when the kernel
    /// refused to map its positions.
    pub fn ring_fill(&self) -> Option<(u64, u64)> {
        let used = self.fill.as_ref()?.used_bytes();
        Some((used, self.ring_bytes))
    }

    /// The ring buffer's size in bytes.
    pub fn ring_bytes(&self) -> u64 {
        self.ring_bytes
    }

    /// The most unread bytes the ring held before a read since the sensor was loaded
    /// (0 when the kernel refused to map its positions): the headroom the reader used.
    pub fn ring_peak(&self) -> u64 {
        self.ring_peak
    }

    /// Records that could not be decoded (should stay 0: a non-zero value is an ABI bug).
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// Records the kernel could not put in the ring buffer, per kind, summed over CPUs.
    pub fn drops(&self) -> Result<KindCounts, SensorError> {
        let mut counts = KindCounts::default();
        for (k, slot) in counts.iter_mut().enumerate().skip(1) {
            let index = u32::try_from(k).unwrap_or(0);
            let per_cpu = self.drops.get(&index, 0).map_err(|e| SensorError::Map {
                name: DROPS_MAP,
                detail: e.to_string(),
            })?;
            *slot = per_cpu.iter().sum();
        }
        Ok(counts)
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, SensorError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(SensorError::Map {
        name,
        detail: "program missing from the object".into(),
    })?;
    prog.try_into()
        .map_err(|source| SensorError::Program { name, source })
}
