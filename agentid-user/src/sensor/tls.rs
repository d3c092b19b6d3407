//! Where the TLS request probes go: every OpenSSL-family library (`libssl`), nghttp2, and
//! executable with OpenSSL linked in and exported (Node) that the host or a registered
//! agent uses. One attach per file (by device and inode), for all processes: a uprobe lives
//! on the file, so every process mapping it is covered, and the programs keep only
//! watched cgroups. Failures are kept with their reason for `status`, logged once.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use agentid_ebpf::request_source;
use aya::{
    Ebpf,
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeError, UProbeScope},
    },
};
use serde::{Deserialize, Serialize};

/// The uprobe program for `SSL_write*`.
pub const WRITE_PROGRAM: &str = "tls_write";
/// The uprobe program for `nghttp2_submit_request*`.
pub const H2_PROGRAM: &str = "h2_request";

/// Library directories searched at start (multiarch Debian/Ubuntu, Fedora/Arch, Alpine).
const LIB_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib64",
    "/lib",
];
/// Executables with OpenSSL inside them, looked for at start.
const EXECUTABLES: [&str; 2] = ["/usr/bin/node", "/usr/local/bin/node"];

/// One file the probes went to, or tried to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsTarget {
    pub path: PathBuf,
    /// Functions the probes are attached to in it.
    pub attached: Vec<String>,
    /// Why a function could not be attached (`None` when every one that exists is).
    pub error: Option<String>,
}

/// The files seen so far, by (device, inode), with their targets.
#[derive(Debug, Default)]
pub struct TlsAttacher {
    seen: HashMap<(u64, u64), Option<usize>>,
    targets: Vec<TlsTarget>,
}

/// Where the TLS uprobe programs are: in the loaded object (a fresh start), or opened
/// from their pins (a resumed set, whose object is gone).
pub(crate) trait UprobePrograms {
    fn uprobe(&mut self, name: &str) -> Result<&mut UProbe, String>;
}

impl UprobePrograms for Ebpf {
    fn uprobe(&mut self, name: &str) -> Result<&mut UProbe, String> {
        let prog = self
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the object"))?;
        prog.try_into().map_err(|e: ProgramError| e.to_string())
    }
}

/// A resumed set's uprobe programs, opened from their pins.
#[derive(Default)]
pub(crate) struct ResumedUprobes(pub(crate) Vec<(&'static str, UProbe)>);

impl UprobePrograms for ResumedUprobes {
    fn uprobe(&mut self, name: &str) -> Result<&mut UProbe, String> {
        self.0
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p)
            .ok_or_else(|| format!("program {name} missing from the pinned set"))
    }
}

/// Whether a mapped file's name says it may carry the functions probed.
pub fn is_tls_library(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libssl.so") || name.starts_with("libnghttp2.so")
}

impl TlsAttacher {
    pub fn targets(&self) -> &[TlsTarget] {
        &self.targets
    }

    /// The host's libraries and Node: attached once at start.
    pub fn attach_system(&mut self, progs: &mut dyn UprobePrograms) {
        for dir in LIB_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_str().is_some_and(is_tls_library))
                .collect();
            paths.sort();
            for path in paths {
                self.attach_file(progs, &path, false);
            }
        }
        for exe in EXECUTABLES {
            self.attach_file(progs, Path::new(exe), true);
        }
    }

    /// The libraries a process maps and its executable (a registered agent's: conda,
    /// venv and container copies of libssl, a Node binary outside the usual places).
    /// Paths go through `/proc/PID/root`, so a process in another mount namespace works.
    pub fn attach_process(&mut self, progs: &mut dyn UprobePrograms, pid: u32) {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            let mut libs: Vec<&str> = maps
                .lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .filter(|p| p.starts_with('/') && is_tls_library(p))
                .collect();
            libs.dedup();
            for lib in libs {
                self.attach_file(progs, &root.join(lib.trim_start_matches('/')), false);
            }
        }
        self.attach_file(progs, Path::new(&format!("/proc/{pid}/exe")), true);
    }

    /// Attaches to one file unless its inode was seen. An executable that exports none of
    /// the functions is remembered silently (most are not TLS stacks).
    fn attach_file(&mut self, progs: &mut dyn UprobePrograms, path: &Path, executable: bool) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let id = (meta.dev(), meta.ino());
        if self.seen.contains_key(&id) {
            return;
        }
        let target = attach_functions(progs, path);
        if executable && target.attached.is_empty() && target.error.is_none() {
            self.seen.insert(id, None);
            return;
        }
        if let Some(e) = &target.error {
            tracing::warn!(path = %path.display(), error = %e, "TLS request probes not attached");
        } else if target.attached.is_empty() {
            tracing::info!(path = %path.display(), "no TLS write function to probe");
        } else {
            tracing::info!(path = %path.display(), functions = ?target.attached, "TLS request probes attached");
        }
        self.seen.insert(id, Some(self.targets.len()));
        self.targets.push(target);
    }
}

/// What each attach attempt came to.
enum Outcome {
    Attached,
    /// The file does not export the symbol.
    Absent,
    Failed(String),
}

fn attach_one(
    progs: &mut dyn UprobePrograms,
    program: &str,
    symbol: &str,
    cookie: u32,
    path: &Path,
) -> Outcome {
    let prog = match progs.uprobe(program) {
        Ok(p) => p,
        Err(why) => return Outcome::Failed(why),
    };
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::Symbol(symbol),
        cookie: Some(u64::from(cookie)),
    };
    match prog.attach(point, path, UProbeScope::AllProcesses) {
        Ok(_) => Outcome::Attached,
        Err(ProgramError::UProbeError(UProbeError::SymbolError { .. })) => Outcome::Absent,
        Err(e) => Outcome::Failed(format!("{symbol}: {}", error_chain(&e))),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// `SSL_write`; `SSL_write_ex2` where it exists, else `SSL_write_ex` (never both: on
/// OpenSSL ≥ 3.3 `_ex` calls `_ex2`, so both would report one write twice); and the
/// nghttp2 request functions.
fn attach_functions(progs: &mut dyn UprobePrograms, path: &Path) -> TlsTarget {
    let mut attached = Vec::new();
    let mut errors = Vec::new();
    let mut note = |symbol: &str, outcome: Outcome| match outcome {
        Outcome::Attached => {
            attached.push(symbol.to_owned());
            true
        }
        Outcome::Absent => false,
        Outcome::Failed(e) => {
            errors.push(e);
            true
        }
    };
    let write = request_source::SSL_WRITE;
    let write_ex = request_source::SSL_WRITE_EX;
    note(
        "SSL_write",
        attach_one(progs, WRITE_PROGRAM, "SSL_write", write, path),
    );
    if !note(
        "SSL_write_ex2",
        attach_one(progs, WRITE_PROGRAM, "SSL_write_ex2", write_ex, path),
    ) {
        note(
            "SSL_write_ex",
            attach_one(progs, WRITE_PROGRAM, "SSL_write_ex", write_ex, path),
        );
    }
    let h2 = request_source::NGHTTP2;
    for symbol in ["nghttp2_submit_request", "nghttp2_submit_request2"] {
        note(symbol, attach_one(progs, H2_PROGRAM, symbol, h2, path));
    }
    TlsTarget {
        path: path.to_owned(),
        attached,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}
