//! Closed archives on disk: compressed after rotation, read back in either form.
//!
//! A closed `audit-NNNNNN.log` never changes again, so it is compressed (zstd) to
//! `audit-NNNNNN.log.zst`: JSON lines shrink ~12× (the hashes are most of what remains).
//! The compressed bytes are the same records: every reader decompresses, hashes and
//! signatures are checked on the records themselves, and a changed byte in a compressed
//! archive is either a zstd checksum error or a record that no longer matches its hash.
//!
//! Crash safety: the compressed form is written to `….zst.tmp`, synced, renamed to
//! `….zst`, the directory synced, and only then is the original removed. Whatever point a
//! crash stops at, one whole copy of the archive is on disk, and [`recover`] (at every
//! open) finishes or undoes the step: a `.tmp` is removed, and an archive present in both
//! forms keeps the original unless the compressed copy decompresses to the same bytes.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use super::{AuditError, archive_number, file_name};
use crate::sys;

pub(super) const COMPRESSED_SUFFIX: &str = ".zst";
const TMP_SUFFIX: &str = ".zst.tmp";
/// zstd level 1: on these records as small as level 3..9 (measured: 58 vs 68 bytes per
/// connect record), and the fastest.
const LEVEL: i32 = 1;

/// A log file's content, decompressed when it is an archive's compressed form.
pub(super) fn read(path: &Path) -> Result<Vec<u8>, AuditError> {
    if !is_compressed(path) {
        return fs::read(path).map_err(AuditError::io(path));
    }
    let file = File::open(path).map_err(AuditError::io(path))?;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(file)
        .and_then(|mut d| d.read_to_end(&mut out))
        .map_err(|e| AuditError::Corrupt {
            path: path.to_owned(),
            line: 0,
            reason: format!("not a whole zstd archive ({e})"),
        })?;
    Ok(out)
}

/// A log file's first line (without decompressing the rest).
pub(super) fn first_line(path: &Path) -> Result<Vec<u8>, AuditError> {
    use std::io::BufRead as _;
    let file = File::open(path).map_err(AuditError::io(path))?;
    let mut line = Vec::new();
    let read = if is_compressed(path) {
        zstd::stream::read::Decoder::new(file)
            .and_then(|d| io::BufReader::new(d).read_until(b'\n', &mut line))
    } else {
        io::BufReader::new(file).read_until(b'\n', &mut line)
    };
    read.map_err(AuditError::io(path))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(line)
}

pub(super) fn is_compressed(path: &Path) -> bool {
    file_name(path).ends_with(COMPRESSED_SUFFIX)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(AuditError::io(dir))
}

/// Compresses the closed archive `path` (`audit-NNNNNN.log`) in place of the original.
pub(super) fn compress(dir: &Path, path: &Path) -> Result<PathBuf, AuditError> {
    let tmp = with_suffix(path, TMP_SUFFIX);
    let done = with_suffix(path, COMPRESSED_SUFFIX);
    let write = || -> io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut input = File::open(path)?;
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(sys::O_NOFOLLOW | sys::O_CLOEXEC)
            .open(&tmp)?;
        let mut enc = zstd::stream::write::Encoder::new(out, LEVEL)?;
        enc.include_checksum(true)?;
        io::copy(&mut input, &mut enc)?;
        let mut out = enc.finish()?;
        out.flush()?;
        out.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        AuditError::Io {
            path: tmp.clone(),
            source: e,
        }
    })?;
    fs::rename(&tmp, &done).map_err(AuditError::io(&done))?;
    sync_dir(dir)?;
    fs::remove_file(path).map_err(AuditError::io(path))?;
    sync_dir(dir)?;
    Ok(done)
}

/// Finishes or undoes a compression a crash interrupted: a temporary file is removed, and
/// of an archive in both forms the compressed one stays only if it says the same.
pub(super) fn recover(dir: &Path) -> Result<(), AuditError> {
    each_plain(dir, false)
}

/// [`recover`], then compresses every archive still plain (all are closed: only
/// `audit.log` is ever appended to).
pub(super) fn compress_plain(dir: &Path) -> Result<(), AuditError> {
    each_plain(dir, true)
}

fn each_plain(dir: &Path, compress_rest: bool) -> Result<(), AuditError> {
    let mut plain = Vec::new();
    for entry in fs::read_dir(dir).map_err(AuditError::io(dir))? {
        let entry = entry.map_err(AuditError::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.ends_with(TMP_SUFFIX) {
            fs::remove_file(&path).map_err(AuditError::io(&path))?;
        } else if let Some((_, false)) = archive_number(&name) {
            plain.push(path);
        }
    }
    plain.sort();
    for path in plain {
        let done = with_suffix(&path, COMPRESSED_SUFFIX);
        if done.exists() {
            // Both forms: the compressed one was renamed into place whole (synced first),
            // but it is only trusted over the original when it says the same.
            let same = read(&done).is_ok_and(|z| fs::read(&path).is_ok_and(|p| p == z));
            if same {
                fs::remove_file(&path).map_err(AuditError::io(&path))?;
                sync_dir(dir)?;
                continue;
            }
            fs::remove_file(&done).map_err(AuditError::io(&done))?;
        }
        if compress_rest {
            compress(dir, &path)?;
        }
    }
    Ok(())
}
