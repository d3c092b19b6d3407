//! The on-disk spool: at-least-once delivery across receiver outages and daemon restarts.
//!
//! Layout of a sink's spool directory:
//! - `seg-<16 hex>.log`: append-only segments of JSON lines, one [`Record`] each;
//! - `committed`: the position (segment, byte offset) up to which the receiver accepted
//!   everything, replaced atomically (write, fsync, rename, fsync the directory);
//! - `dead-letter.jsonl`: records a receiver rejected for good, with the reason.
//!
//! Records are appended and fsync'd (once per batch of appends) before delivery starts, and
//! the committed position moves only after the receiver accepted them, so a SIGKILL at any
//! point loses nothing that was appended: after a restart everything past `committed` is
//! delivered again (receivers may see duplicates; records carry a stable `uid` to dedupe).
//! A write torn by the kill leaves a partial last line, which [`Spool::open`] cuts off;
//! that record was never acknowledged to anyone.
//!
//! The spool is bounded: [`Spool::append`] refuses records that would take the unacknowledged
//! bytes past `max_bytes` and the caller counts and reports the loss. Fully acknowledged
//! segments are deleted, so disk use stays below `max_bytes` plus one segment.
use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

/// Default bound of a spool: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

const COMMITTED: &str = "committed";
pub const DEAD_LETTER: &str = "dead-letter.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One spooled record: an encoded payload, ready for its sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The alert uid (or activity id): stable across redeliveries.
    pub uid: String,
    /// The sink-specific encoding (a JSON document, a syslog message, ...).
    pub payload: String,
}

/// A position in the spool: a segment and a byte offset into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Records read from the committed position on, and where they end.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    /// Lines that did not parse (a damaged spool): dead-letter them, do not deliver.
    pub corrupt: Vec<String>,
    pub end: Option<Position>,
}

#[derive(Debug)]
struct Inner {
    /// (segment number, bytes written), oldest first; the last one is being written.
    segments: VecDeque<(u64, u64)>,
    writer: File,
    head: Position,
    /// Bytes in all segments.
    total: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

fn seg_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("seg-{n:016x}.log"))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn open_append(path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))
}

/// Cuts a partial last line (a write torn by a crash); returns the new length.
fn truncate_torn(path: &Path) -> Result<u64, SpoolError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(io_err(path))?;
    let keep = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep != buf.len() {
        tracing::warn!(path = %path.display(), cut = buf.len() - keep, "spool: cutting a torn record");
        f.set_len(keep as u64).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok(keep as u64)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering from a crash: segments before
    /// the committed position are removed, a torn last record is cut.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut numbers: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                u64::from_str_radix(name.strip_prefix("seg-")?.strip_suffix(".log")?, 16).ok()
            })
            .collect();
        numbers.sort_unstable();
        let committed: Option<Position> = fs::read(dir.join(COMMITTED))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut head = committed.unwrap_or(Position {
            segment: numbers.first().copied().unwrap_or(1),
            offset: 0,
        });
        for &n in numbers.iter().filter(|&&n| n < head.segment) {
            let p = seg_path(dir, n);
            fs::remove_file(&p).map_err(io_err(&p))?;
        }
        numbers.retain(|&n| n >= head.segment);
        if numbers.is_empty() {
            numbers.push(head.segment.max(1));
        }
        if numbers[0] > head.segment {
            head = Position {
                segment: numbers[0],
                offset: 0,
            };
        }
        let mut segments = VecDeque::new();
        let last = numbers.len() - 1;
        for (i, &n) in numbers.iter().enumerate() {
            let p = seg_path(dir, n);
            let len = if i == last {
                open_append(&p)?;
                truncate_torn(&p)?
            } else {
                fs::metadata(&p).map_err(io_err(&p))?.len()
            };
            segments.push_back((n, len));
        }
        if head.segment == segments[0].0 {
            head.offset = head.offset.min(segments[0].1);
        }
        let total = segments.iter().map(|s| s.1).sum();
        let writer = open_append(&seg_path(dir, numbers[last]))?;
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
            // Small enough that acknowledged bytes are freed soon, large enough to keep
            // the file count low.
            segment_bytes: (max_bytes / 8).clamp(4096, 8 << 20),
            inner: Mutex::new(Inner {
                segments,
                writer,
                head,
                total,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the files consistent (every write is
        // line-atomic from the reader's view: readers stop at the recorded length).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes not yet acknowledged.
    pub fn pending_bytes(&self) -> u64 {
        Self::pending(&self.lock())
    }

    fn pending(inner: &Inner) -> u64 {
        inner.total
            - inner
                .head
                .offset
                .min(inner.segments.front().map_or(0, |s| s.1))
    }

    /// Appends records and fsyncs once; returns, per record, whether it was accepted
    /// (`false`: the spool is full).
    pub fn append(&self, records: &[Record]) -> Result<Vec<bool>, SpoolError> {
        let mut inner = self.lock();
        let mut accepted = Vec::with_capacity(records.len());
        let mut wrote = false;
        for r in records {
            let mut line = serde_json::to_vec(r).unwrap_or_default();
            line.push(b'\n');
            let len = line.len() as u64;
            if Self::pending(&inner) + len > self.max_bytes {
                accepted.push(false);
                continue;
            }
            let (cur, cur_len) = *inner.segments.back().unwrap_or(&(1, 0));
            if cur_len > 0 && cur_len + len > self.segment_bytes {
                inner.writer.sync_data().map_err(io_err(&self.dir))?;
                let p = seg_path(&self.dir, cur + 1);
                inner.writer = open_append(&p)?;
                inner.segments.push_back((cur + 1, 0));
                sync_dir(&self.dir)?;
            }
            let path = seg_path(&self.dir, inner.segments.back().map_or(1, |s| s.0));
            if let Err(e) = inner.writer.write_all(&line) {
                // Leave no partial line behind for the reader or a restart.
                let len = inner.segments.back().map_or(0, |s| s.1);
                let _ = inner.writer.set_len(len);
                return Err(io_err(&path)(e));
            }
            if let Some(last) = inner.segments.back_mut() {
                last.1 += len;
            }
            inner.total += len;
            wrote = true;
            accepted.push(true);
        }
        if wrote {
            inner.writer.sync_data().map_err(io_err(&self.dir))?;
        }
        Ok(accepted)
    }

    /// Reads up to `max_records` / about `max_bytes` records from the committed position.
    /// Nothing moves until [`Spool::commit`].
    pub fn read_batch(&self, max_records: usize, max_bytes: usize) -> Result<Batch, SpoolError> {
        let inner = self.lock();
        let mut batch = Batch::default();
        let mut bytes = 0usize;
        let mut pos = inner.head;
        for &(n, len) in &inner.segments {
            if n < pos.segment {
                continue;
            }
            if n > pos.segment {
                pos = Position {
                    segment: n,
                    offset: 0,
                };
            }
            if pos.offset >= len {
                continue;
            }
            let path = seg_path(&self.dir, n);
            let mut f = File::open(&path).map_err(io_err(&path))?;
            f.seek(SeekFrom::Start(pos.offset)).map_err(io_err(&path))?;
            let mut r = BufReader::new(f.take(len - pos.offset));
            let mut line = Vec::new();
            loop {
                if batch.records.len() + batch.corrupt.len() >= max_records
                    || (bytes >= max_bytes && bytes > 0)
                {
                    return Ok(batch);
                }
                line.clear();
                let got = r.read_until(b'\n', &mut line).map_err(io_err(&path))?;
                if got == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                pos.offset += got as u64;
                bytes += got;
                batch.end = Some(pos);
                match serde_json::from_slice::<Record>(&line) {
                    Ok(rec) => batch.records.push(rec),
                    Err(_) => batch
                        .corrupt
                        .push(String::from_utf8_lossy(&line).trim_end().to_owned()),
                }
            }
        }
        Ok(batch)
    }

    /// Marks everything up to `end` as accepted by the receiver and frees whole segments.
    pub fn commit(&self, end: Position) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        let tmp = self.dir.join("committed.tmp");
        let body = serde_json::to_vec(&end).unwrap_or_default();
        File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(&body)?;
                f.sync_all()
            })
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, self.dir.join(COMMITTED)).map_err(io_err(&self.dir))?;
        inner.head = end;
        // Delete fully read segments, never the one being written.
        while inner.segments.len() > 1 {
            let (n, len) = inner.segments[0];
            if n < end.segment || (n == end.segment && end.offset >= len) {
                let p = seg_path(&self.dir, n);
                fs::remove_file(&p).map_err(io_err(&p))?;
                inner.segments.pop_front();
                inner.total -= len;
                if inner.head.segment == n {
                    inner.head = Position {
                        segment: inner.segments[0].0,
                        offset: 0,
                    };
                }
            } else {
                break;
            }
        }
        drop(inner);
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Appends a rejected record, with why, to `dead-letter.jsonl` (rotated once to
    /// `dead-letter.jsonl.1` past the spool's size bound so it cannot fill the disk).
    pub fn dead_letter(
        &self,
        sink: &str,
        uid: &str,
        payload: &str,
        reason: &str,
    ) -> Result<(), SpoolError> {
        let path = self.dir.join(DEAD_LETTER);
        if fs::metadata(&path).map_or(0, |m| m.len()) > self.max_bytes {
            let old = self.dir.join(format!("{DEAD_LETTER}.1"));
            fs::rename(&path, &old).map_err(io_err(&path))?;
        }
        let mut line = serde_json::to_vec(&serde_json::json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "sink": sink,
            "uid": uid,
            "reason": reason,
            "payload": payload,
        }))
        .unwrap_or_default();
        line.push(b'\n');
        let mut f = open_append(&path)?;
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .map_err(io_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tempdir(tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "agentid-spool-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn rec(i: usize) -> Record {
        Record {
            uid: format!("uid-{i}"),
            payload: format!("payload {i} with \"quotes\"\nand a newline"),
        }
    }

    #[test]
    fn unacknowledged_records_survive_reopen() {
        let dir = tempdir("reopen");
        let s = Spool::open(&dir, 1 << 20).unwrap();
        let recs: Vec<Record> = (0..10).map(rec).collect();
        assert!(s.append(&recs).unwrap().iter().all(|&a| a));
        let b = s.read_batch(4, usize::MAX).unwrap();
        assert_eq!(b.records, recs[..4]);
        s.commit(b.end.unwrap()).unwrap();
        // Read but not committed: must come back.
        let b = s.read_batch(3, usize::MAX).unwrap();
        assert_eq!(b.records, recs[4..7]);
        drop(s);
        let s = Spool::open(&dir, 1 << 20).unwrap();
        let b = s.read_batch(100, usize::MAX).unwrap();
        assert_eq!(b.records, recs[4..]);
        s.commit(b.end.unwrap()).unwrap();
        assert_eq!(s.pending_bytes(), 0);
        assert!(s.read_batch(100, usize::MAX).unwrap().records.is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn torn_write_is_cut_and_segments_rotate_and_free() {
        let dir = tempdir("torn");
        let s = Spool::open(&dir, 64 * 1024).unwrap();
        let recs: Vec<Record> = (0..200).map(rec).collect();
        for chunk in recs.chunks(7) {
            s.append(chunk).unwrap();
        }
        let segs = || {
            fs::read_dir(&dir)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("seg-")
                })
                .count()
        };
        assert!(segs() > 1, "rotated");
        drop(s);
        // A torn append at the end.
        let last = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("seg-"))
            .max()
            .unwrap();
        OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap()
            .write_all(b"{\"uid\":\"x")
            .unwrap();
        let s = Spool::open(&dir, 64 * 1024).unwrap();
        let mut got = Vec::new();
        loop {
            let b = s.read_batch(50, usize::MAX).unwrap();
            assert!(b.corrupt.is_empty());
            let Some(end) = b.end else { break };
            got.extend(b.records);
            s.commit(end).unwrap();
        }
        assert_eq!(got, recs);
        assert_eq!(segs(), 1, "acknowledged segments deleted");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn full_spool_refuses_then_accepts_after_commit() {
        let dir = tempdir("full");
        let s = Spool::open(&dir, 4096).unwrap();
        let big = Record {
            uid: "u".into(),
            payload: "x".repeat(1500),
        };
        let acc = s.append(&[big.clone(), big.clone(), big.clone()]).unwrap();
        assert_eq!(acc, vec![true, true, false]);
        let b = s.read_batch(1, usize::MAX).unwrap();
        s.commit(b.end.unwrap()).unwrap();
        assert_eq!(s.append(&[big]).unwrap(), vec![true]);
        s.dead_letter("t", "u", "p", "400 bad").unwrap();
        let dl = fs::read_to_string(dir.join(DEAD_LETTER)).unwrap();
        assert!(dl.contains("\"reason\":\"400 bad\""));
        fs::remove_dir_all(dir).unwrap();
    }
}
