//! Pinned programs and maps: the kernel side outlives a daemon that is killed.
//!
//! Every link the sensor attaches and the maps the daemon reads or writes (the ring
//! buffer, the drop counters, the watched cgroups, the daemon's own tgid) are pinned under
//! `PIN_DIR/abi-HASH/`. A daemon killed with SIGKILL (or crashed) leaves them there: the
//! programs keep recording into the ring buffer, and the next start resumes the set and
//! reads what waited. A clean stop removes the set (see [`PinSet::remove`]).
//!
//! `HASH` covers the compiled eBPF object, so a new build never resumes a set whose
//! records or maps it would misread: a set of another build is removed, like an
//! incomplete one.
use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData},
    programs::{
        ProbeKind, UProbe,
        links::{FdLink, PinnedLink},
    },
};
use sha2::{Digest as _, Sha256};

use super::SensorError;

/// Where pin sets live by default: one directory per state directory (several daemons
/// with different state directories never share or remove each other's set).
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/agentid";

/// Where bpffs is mounted by convention.
const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A pin dir under `/sys/fs/bpf` needs bpffs there (systemd mounts it at boot; the unit
/// mounts it too). The daemon does not mount it itself: its sandbox refuses mount(2).
fn check_bpffs(base: &Path) -> Result<(), String> {
    if !base.starts_with(BPFFS) {
        return Ok(());
    }
    let path = std::ffi::CString::new(BPFFS).map_err(|e| e.to_string())?;
    match crate::sys::fs_magic(&path) {
        Ok(BPF_FS_MAGIC) => Ok(()),
        Ok(_) => Err(format!("no bpffs is mounted on {BPFFS}")),
        Err(e) => Err(format!("{BPFFS}: {e}")),
    }
}

/// A link taken out of its program, to be pinned or kept.
pub(crate) type Link = (&'static str, FdLink);

/// The default pin directory of a daemon using `state_dir`.
pub fn default_pin_dir(state_dir: &Path) -> PathBuf {
    let digest = Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    Path::new(DEFAULT_PIN_ROOT).join(format!("state-{}", &hex::encode(digest)[..16]))
}

/// One daemon's pin set: `base/abi-HASH/{link-NAME,map-NAME}`.
#[derive(Debug, Clone)]
pub struct PinSet {
    base: PathBuf,
    dir: PathBuf,
}

/// The maps of a resumed set, by name, and the links that keep its programs attached.
pub(crate) struct Resumed {
    pub(crate) maps: Vec<(&'static str, Map)>,
    /// Held so that the set stays whole while this daemon runs (the pins hold them too).
    pub(crate) links: Vec<PinnedLink>,
    /// Programs pinned without a link (TLS uprobes: attached per library at each start).
    pub(crate) uprobes: Vec<(&'static str, UProbe)>,
}

impl PinSet {
    pub fn new(base: &Path, object: &[u8]) -> Self {
        let digest = Sha256::digest(object);
        Self {
            base: base.to_owned(),
            dir: base.join(format!("abi-{}", &hex::encode(digest)[..16])),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn link_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("link-{name}"))
    }

    fn map_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("map-{name}"))
    }

    fn prog_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("prog-{name}"))
    }

    /// Opens the set if it is complete: every link in `programs`, every map in `maps`.
    /// Anything else under `base` (another build's set, an incomplete one, a partial pin
    /// left by a kill mid-way) is removed, so the caller starts fresh.
    pub(crate) fn resume(
        &self,
        programs: &[&'static str],
        maps: &[&'static str],
        uprobes: &[&'static str],
    ) -> Result<Option<Resumed>, SensorError> {
        self.remove_others()?;
        if !self.dir.is_dir() {
            return Ok(None);
        }
        match self.open(programs, maps, uprobes) {
            Ok(resumed) => Ok(Some(resumed)),
            Err(why) => {
                tracing::warn!(dir = %self.dir.display(), "removing an incomplete pin set: {why}");
                self.remove()?;
                Ok(None)
            }
        }
    }

    fn open(
        &self,
        programs: &[&'static str],
        maps: &[&'static str],
        uprobes: &[&'static str],
    ) -> Result<Resumed, String> {
        let links = programs
            .iter()
            .map(|name| {
                PinnedLink::from_pin(Self::link_path(&self.dir, name))
                    .map_err(|e| format!("link {name}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let maps = maps
            .iter()
            .map(|name| {
                MapData::from_pin(Self::map_path(&self.dir, name))
                    .and_then(Map::from_map_data)
                    .map(|m| (*name, m))
                    .map_err(|e| format!("map {name}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let uprobes = uprobes
            .iter()
            .map(|name| {
                UProbe::from_pin(Self::prog_path(&self.dir, name), ProbeKind::Entry)
                    .map(|p| (*name, p))
                    .map_err(|e| format!("program {name}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Resumed {
            maps,
            links,
            uprobes,
        })
    }

    /// Pins every link and map, first under a temporary name then renamed into place, so
    /// a set under the final name is always whole. (No dots in names: bpffs refuses them.) Returns the links (their pins keep the
    /// programs attached; dropping them changes nothing).
    pub(crate) fn pin(
        &self,
        links: Vec<Link>,
        maps: &[(&'static str, Map)],
        uprobes: &mut [(&'static str, &mut UProbe)],
    ) -> Result<Vec<PinnedLink>, SensorError> {
        let err = |what: String| SensorError::Pin {
            dir: self.dir.clone(),
            detail: what,
        };
        check_bpffs(&self.base).map_err(err)?;
        let tmp = self.base.join(format!("partial-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| err(format!("creating {}: {e}", tmp.display())))?;
        let mut pinned = Vec::with_capacity(links.len());
        for (name, link) in links {
            let link = link
                .pin(Self::link_path(&tmp, name))
                .map_err(|e| err(format!("link {name}: {e}")))?;
            pinned.push(link);
        }
        for (name, map) in maps {
            map.pin(Self::map_path(&tmp, name))
                .map_err(|e| err(format!("map {name}: {e}")))?;
        }
        for (name, prog) in uprobes.iter_mut() {
            prog.pin(Self::prog_path(&tmp, name))
                .map_err(|e| err(format!("program {name}: {e}")))?;
        }
        fs::rename(&tmp, &self.dir).map_err(|e| err(format!("renaming into place: {e}")))?;
        Ok(pinned)
    }

    /// Removes the set: its links detach as soon as no process holds them.
    pub fn remove(&self) -> Result<(), SensorError> {
        remove_tree(&self.dir).map_err(|e| SensorError::Pin {
            dir: self.dir.clone(),
            detail: format!("removing: {e}"),
        })?;
        // The base directory goes too once empty (a daemon's only set).
        let _ = fs::remove_dir(&self.base);
        Ok(())
    }

    /// Removes every other entry of `base`: sets of other builds, partial pins.
    fn remove_others(&self) -> Result<(), SensorError> {
        let entries = match fs::read_dir(&self.base) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(SensorError::Pin {
                    dir: self.base.clone(),
                    detail: e.to_string(),
                });
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path != self.dir {
                tracing::info!(path = %path.display(), "removing a stale pin set");
                remove_tree(&path).map_err(|e| SensorError::Pin {
                    dir: path.clone(),
                    detail: e.to_string(),
                })?;
            }
        }
        Ok(())
    }
}

fn remove_tree(path: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_differ_by_state_dir_and_by_build() {
        let a = default_pin_dir(Path::new("/var/lib/agentid"));
        let b = default_pin_dir(Path::new("/tmp/other/state"));
        assert_ne!(a, b);
        assert!(a.starts_with(DEFAULT_PIN_ROOT));
        let one = PinSet::new(&a, b"object one");
        let two = PinSet::new(&a, b"object two");
        assert_ne!(one.dir(), two.dir());
        assert_eq!(one.dir().parent(), Some(a.as_path()));
    }
}
