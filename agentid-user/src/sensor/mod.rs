//! The sensor: loads and attaches the kernel programs, and turns ring-buffer records into
//! typed [`Event`]s. Programs stay attached exactly as long as the [`Sensor`] lives.
pub mod decode;
mod kernel;
pub mod reassemble;
pub mod request;
mod tls;

use std::{
    fs::File,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use agentid_ebpf::{CONFIG_GLOBAL, DROPS_MAP, EVENTS_MAP, OPEN_CGROUPS_MAP, kind};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSockAddr, RawTracePoint, TracePoint, UProbe},
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
    #[error("reading the ring buffer: {0}")]
    Io(#[from] std::io::Error),
}

/// Per-kind counters, indexed by the ABI kind number.
pub type KindCounts = [u64; kind::COUNT as usize];

#[derive(Debug, Clone, Default)]
pub struct SensorOptions {
    /// The process whose own activity the kernel drops (default: this process).
    pub self_tgid: Option<u32>,
}

/// Attached kernel programs and the ring buffer they write to.
pub struct Sensor {
    // Field order matters for drop: the ring buffer before the Ebpf that owns the programs.
    ring: AsyncFd<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    open_cgroups: aya::maps::HashMap<MapData, u64, u8>,
    ebpf: Ebpf,
    tls: tls::TlsAttacher,
    decoder: Decoder,
    received: KindCounts,
    decode_errors: u64,
    /// When the last read returned records (drives timer polling, see `next_events`).
    last_read: Option<Instant>,
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

/// Timer poll while records flow: a record submitted without a wakeup waits at most this.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// Quiet time after which the reader waits for a wakeup only. Four times the programs'
/// `WAKE_EVERY_NS`: once a CPU has not asked for a wakeup within that interval, its next
/// record asks for one, so nothing can be left unread.
const IDLE_AFTER: Duration = Duration::from_millis(4 * agentid_ebpf::WAKE_EVERY_NS / 1_000_000);

/// Tracepoints attached by category/name (fixed syscall layouts).
const TRACEPOINTS: [(&str, &str); 4] = [
    ("syscalls", "sys_enter_openat"),
    ("syscalls", "sys_exit_openat"),
    ("syscalls", "sys_enter_socket"),
    ("syscalls", "sys_exit_socket"),
];
/// Raw tracepoints (kernel pointers read with BTF offsets).
const RAW_TRACEPOINTS: [&str; 3] = [
    "sched_process_exec",
    "sched_process_fork",
    "sched_process_exit",
];
/// cgroup socket-address hooks, attached at the cgroup v2 root.
const SOCK_HOOKS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
/// Entry uprobes on TLS libraries (attached per file by [`tls::TlsAttacher`]).
const UPROBES: [&str; 2] = [tls::WRITE_PROGRAM, tls::H2_PROGRAM];

/// Loads and attaches every program: tracepoints, raw tracepoints, and the cgroup socket
/// hooks at the cgroup v2 root.
fn attach_all(ebpf: &mut Ebpf) -> Result<(), SensorError> {
    for (category, name) in TRACEPOINTS {
        let prog: &mut TracePoint = program(ebpf, name)?;
        prog.load()
            .map_err(|source| SensorError::Program { name, source })?;
        prog.attach(category, name)
            .map_err(|source| SensorError::Program { name, source })?;
    }
    for name in RAW_TRACEPOINTS {
        let prog: &mut RawTracePoint = program(ebpf, name)?;
        prog.load()
            .map_err(|source| SensorError::Program { name, source })?;
        prog.attach(name)
            .map_err(|source| SensorError::Program { name, source })?;
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
        if prog
            .attach(&root_fd, CgroupAttachMode::AllowMultiple)
            .is_err()
        {
            prog.attach(&root_fd, CgroupAttachMode::Single)
                .map_err(|source| SensorError::Program { name, source })?;
        }
    }
    for name in UPROBES {
        let prog: &mut UProbe = program(ebpf, name)?;
        prog.load()
            .map_err(|source| SensorError::Program { name, source })?;
    }
    Ok(())
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
        let config = kernel::probe_config(self_tgid)?;
        kernel::tracefs()?;
        let mut ebpf = EbpfLoader::new()
            .override_global(CONFIG_GLOBAL, &config, true)
            .load(PROGRAMS)?;

        attach_all(&mut ebpf)?;
        let mut tls = tls::TlsAttacher::default();
        tls.attach_system(&mut ebpf);

        let ring = ebpf.take_map(EVENTS_MAP).ok_or(SensorError::Map {
            name: EVENTS_MAP,
            detail: "missing".into(),
        })?;
        let ring = RingBuf::try_from(ring).map_err(|e| SensorError::Map {
            name: EVENTS_MAP,
            detail: e.to_string(),
        })?;
        let drops = ebpf.take_map(DROPS_MAP).ok_or(SensorError::Map {
            name: DROPS_MAP,
            detail: "missing".into(),
        })?;
        let drops = PerCpuArray::try_from(drops).map_err(|e| SensorError::Map {
            name: DROPS_MAP,
            detail: e.to_string(),
        })?;
        let open_cgroups = ebpf.take_map(OPEN_CGROUPS_MAP).ok_or(SensorError::Map {
            name: OPEN_CGROUPS_MAP,
            detail: "missing".into(),
        })?;
        let open_cgroups =
            aya::maps::HashMap::try_from(open_cgroups).map_err(|e| SensorError::Map {
                name: OPEN_CGROUPS_MAP,
                detail: e.to_string(),
            })?;
        tracing::debug!(fd = ring.as_raw_fd(), ?config, "sensor attached");
        // SAFETY: the RingBuf owns its map fd, which stays open (and is never replaced)
        // for as long as the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        release_freed_heap();
        Ok(Self {
            ring,
            drops,
            open_cgroups,
            ebpf,
            tls,
            decoder: Decoder::new(Clock::now()),
            received: KindCounts::default(),
            decode_errors: 0,
            last_read: None,
        })
    }

    /// Waits until records are available, then appends every available one to `out`.
    pub async fn next_events(&mut self, out: &mut Vec<Event>) -> Result<(), SensorError> {
        let start = out.len();
        let Self {
            ring,
            decoder,
            received,
            decode_errors,
            last_read,
            ..
        } = self;
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
                let read = Self::drain_ring(ring.get_mut(), decoder, received, decode_errors, out);
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
            let ready = if polling {
                tokio::time::timeout(POLL_EVERY, ring.readable_mut())
                    .await
                    .ok()
            } else {
                Some(ring.readable_mut().await)
            };
            let read = match ready {
                Some(guard) => {
                    let mut guard = guard?;
                    let read = Self::drain_ring(
                        guard.get_inner_mut(),
                        decoder,
                        received,
                        decode_errors,
                        out,
                    );
                    // Only clears if no new readiness arrived since the guard was taken.
                    guard.clear_ready();
                    read
                }
                None => Self::drain_ring(ring.get_mut(), decoder, received, decode_errors, out),
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
            ..
        } = self;
        if Self::drain_ring(ring.get_mut(), decoder, received, decode_errors, out) > 0 {
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
    ) -> usize {
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
                    // A chunk, or a request continuation that held no head: counted
                    // under its record kind (the header's first field).
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

    /// Puts the TLS request probes on the libraries process `pid` maps and on its
    /// executable, where not done yet (a registered agent's own copies).
    pub fn watch_tls_of(&mut self, pid: u32) {
        self.tls.attach_process(&mut self.ebpf, pid);
    }

    /// The files the TLS request probes went to, with any failure.
    pub fn tls_targets(&self) -> &[TlsTarget] {
        self.tls.targets()
    }

    /// Every program the sensor attaches, by name.
    pub fn program_names() -> Vec<&'static str> {
        TRACEPOINTS
            .iter()
            .map(|(_, n)| *n)
            .chain(RAW_TRACEPOINTS)
            .chain(SOCK_HOOKS)
            .chain(UPROBES)
            .collect()
    }

    /// Records received and decoded, per kind.
    pub fn received(&self) -> KindCounts {
        self.received
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
