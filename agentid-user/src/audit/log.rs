//! The writer: appends records, signs checkpoints, rotates, recovers from a torn tail.
use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Instant, SystemTime},
};

use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use super::{
    AuditError, AuditOptions, CURRENT_FILE, Checkpoint, Fsync, GENESIS, archive_name,
    archive_number, encode_record_into, file_name, key, log_files, now_rfc3339,
    prune::{self, AuditRetention},
    public_key_base64, segments, sign_checkpoint_next,
};
use crate::{attribution::AttributedEvent, detect::Alert, sys};

/// An open audit log. Synchronous (plain file writes, occasional fsync): the daemon owns it
/// from one thread — a dedicated one, or `spawn_blocking` — never on the event path itself.
///
/// Checkpoints: every append checks whether [`AuditOptions::checkpoint_interval`] has
/// passed, so a busy log is signed without help; a quiet one needs the caller to call
/// [`AuditLog::maybe_checkpoint`] from a timer (every few seconds is plenty), which also
/// performs a due [`Fsync::Interval`] sync. [`AuditLog::close`] writes the final checkpoint.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    file_bytes: u64,
    key: SigningKey,
    public_key: String,
    opts: AuditOptions,
    next_seq: u64,
    prev: String,
    /// First seq not covered by a checkpoint yet.
    unsigned_from: u64,
    last_type: Option<String>,
    last_final: bool,
    last_checkpoint_at: Instant,
    last_sync: Instant,
    dirty: bool,
    next_archive: u64,
    /// Set for a forward-secure log: the key is replaced at every checkpoint.
    key_file: Option<KeyFile>,
    /// A checkpoint handed over to the staged key, and the key file was not replaced yet
    /// (a failed sync or rename): retried before the next key is staged.
    uncommitted: bool,
    /// Checkpoints written and not yet taken by [`AuditLog::take_anchors`].
    anchors: Vec<Checkpoint>,
    last_ts: String,
    disk: DiskPolicy,
    /// The seq of the log's first record on disk (after pruning, the first kept).
    first_seq: u64,
    /// Records chained but not written yet (see [`AuditLog::buffer_event_text`]).
    batch: Batch,
    /// Buffered records written and lost since [`AuditLog::take_counts`].
    counts: Counts,
}

/// Encoded records waiting for their `write`, and where the chain stood before them.
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Per record: the end of its line in `bytes`, and whether it was buffered (counted).
    ends: Vec<(usize, bool)>,
    /// The chain head before the first record (`prev`, `last_type`, `last_final`,
    /// `last_ts`), to go back to when none of them reached the file.
    base: Option<(String, Option<String>, bool, String)>,
}

/// Buffered records written and lost (a failed write), for the audit thread's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub written: u64,
    pub lost: u64,
}

/// What the audit thread gathers before it writes: past this, a batch is written at once.
const BATCH_BYTES: usize = 64 * 1024;

/// What becomes of closed archives. A log opened alone keeps them plain and forever; the
/// daemon compresses them and applies its retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskPolicy {
    /// Compress each archive once closed (`audit-NNNNNN.log.zst`).
    pub compress: bool,
    pub retention: Option<AuditRetention>,
}

/// The key file of a forward-secure log and the chain's first public key.
#[derive(Debug)]
struct KeyFile {
    path: PathBuf,
    origin: String,
}

/// The last whole record of the log, found on open.
#[derive(Debug)]
struct Head {
    seq: u64,
    hash: String,
    ty: String,
    is_final: bool,
}

impl AuditLog {
    /// Opens (creating) the log in `dir` and continues its chain. A torn last line left by
    /// a crash is cut off and a `tear` record says so; a rotation a crash interrupted is
    /// completed. Fails if the log's checkpoints were signed with another key.
    pub fn open(dir: &Path, key: SigningKey, opts: AuditOptions) -> Result<Self, AuditError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(AuditError::io(dir))?;
        let public_key = public_key_base64(&key.verifying_key());
        segments::recover(dir)?;
        let files = log_files(dir)?;
        let next_archive = files
            .iter()
            .filter_map(|p| archive_number(&file_name(p)).map(|(n, _)| n))
            .max()
            .map_or(1, |n| n + 1);

        let mut tear = None;
        if let Some(last) = files.last().filter(|p| !segments::is_compressed(p)) {
            tear = cut_torn_tail(last)?;
        }
        let (head, unsigned_from) = scan_back(dir, &files, &public_key)?;
        let first_seq = files
            .first()
            .map(|p| first_record(p))
            .transpose()?
            .flatten()
            .map(|(seq, _)| seq);
        let path = dir.join(CURRENT_FILE);
        let file = open_append(&path)?;
        let file_bytes = file.metadata().map_err(AuditError::io(&path))?.len();
        let now = Instant::now();
        let mut log = Self {
            dir: dir.to_owned(),
            path,
            file,
            file_bytes,
            key,
            public_key,
            opts,
            next_seq: head.as_ref().map_or(1, |h| h.seq + 1),
            prev: head
                .as_ref()
                .map_or_else(|| GENESIS.to_owned(), |h| h.hash.clone()),
            unsigned_from: unsigned_from.unwrap_or(1),
            last_type: head.as_ref().map(|h| h.ty.clone()),
            last_final: head.as_ref().is_some_and(|h| h.is_final),
            last_checkpoint_at: now,
            last_sync: now,
            dirty: false,
            next_archive,
            key_file: None,
            uncommitted: false,
            anchors: Vec::new(),
            last_ts: String::new(),
            disk: DiskPolicy::default(),
            first_seq: 0,
            batch: Batch::default(),
            counts: Counts::default(),
        };
        log.first_seq = first_seq.unwrap_or(log.next_seq);
        // A crash between the rotate record and the rename: finish the rotation, so a
        // rotate record is always the last of its file.
        if log.last_type.as_deref() == Some("rotate") && log.file_bytes > 0 {
            log.rename_and_reopen()?;
        }
        if let Some((file, offset, bytes)) = tear {
            log.write_record(
                "tear",
                &json!({"file": file, "offset": offset, "bytes": bytes}),
            )?;
            log.sync()?;
        }
        Ok(log)
    }

    /// Opens the log with the key in `key_path` (created at first start) and makes it
    /// forward-secure: every checkpoint hands over to a fresh key (its public key signed in
    /// the checkpoint), the checkpoint is synced, then the key file is atomically replaced
    /// and the old private key zeroized, so whoever takes the host later holds only the key
    /// for what comes next and cannot re-sign what was already checkpointed.
    ///
    /// A crash after the checkpoint and before the key file was replaced is finished here:
    /// the next key waits, synced, in `<key>.next` until the replacement.
    pub fn open_with_key_file(
        dir: &Path,
        key_path: &Path,
        opts: AuditOptions,
    ) -> Result<Self, AuditError> {
        let current = key::load_or_create_key(key_path)?;
        let staged = key::staged_path(key_path);
        let mut log = match Self::open(dir, current, opts) {
            Ok(log) => {
                // Staged for a checkpoint that was never written: not part of the chain.
                if staged.exists() {
                    let _ = fs::remove_file(&staged);
                }
                log
            }
            Err(AuditError::KeyChanged {
                dir: d,
                found,
                ours,
            }) => {
                let next = staged
                    .exists()
                    .then(|| key::load_key(&staged))
                    .transpose()?
                    .filter(|k| public_key_base64(&k.verifying_key()) == found);
                let Some(next) = next else {
                    return Err(AuditError::KeyChanged {
                        dir: d,
                        found,
                        ours,
                    });
                };
                key::commit_staged(key_path)?;
                Self::open(dir, next, opts)?
            }
            Err(e) => return Err(e),
        };
        let origin = key::read_origin(key_path)?.unwrap_or_else(|| log.public_key.clone());
        log.key_file = Some(KeyFile {
            path: key_path.to_owned(),
            origin,
        });
        Ok(log)
    }

    /// Sets what becomes of closed archives, and applies it now: compresses archives
    /// still plain, prunes what the retention says is due.
    pub fn set_disk_policy(&mut self, disk: DiskPolicy) -> Result<(), AuditError> {
        self.disk = disk;
        if disk.compress {
            segments::compress_plain(&self.dir)?;
        }
        self.prune(SystemTime::now())?;
        Ok(())
    }

    /// Removes the archives the retention says are due, after writing the signed prune
    /// record that names them (see [`super::prune`]). Returns the record's seq.
    pub fn prune(&mut self, now: SystemTime) -> Result<Option<u64>, AuditError> {
        let Some(policy) = self.disk.retention else {
            return Ok(None);
        };
        let due = prune::due(&self.dir, &policy, now)?;
        if due.is_empty() {
            return Ok(None);
        }
        let pruned = due
            .iter()
            .map(|p| prune::describe(p))
            .collect::<Result<Vec<_>, _>>()?;
        // The first kept record: the next file's first, or the next one written.
        let kept = log_files(&self.dir)?
            .into_iter()
            .find(|p| !due.contains(p))
            .map(|p| first_record(&p))
            .transpose()?
            .flatten()
            .unwrap_or_else(|| (self.next_seq, self.prev.clone()));
        let last = pruned.last().map(|p| (p.last_seq, p.last_hash.as_str()));
        if last != kept.0.checked_sub(1).map(|s| (s, kept.1.as_str())) {
            return Err(AuditError::Corrupt {
                path: self.dir.clone(),
                line: 0,
                reason: format!(
                    "the archives to prune do not chain to seq {}: nothing pruned; run \
                     `agentid audit verify`",
                    kept.0
                ),
            });
        }
        let key_chain = prune::extend_key_chain(&self.dir, &pruned)?;
        let body = prune::record(
            &self.key,
            &self.public_key,
            kept.0,
            &kept.1,
            &pruned,
            &policy,
            key_chain,
        );
        let seq = self.write_record("prune", &body)?;
        self.write_checkpoint(false)?;
        self.sync()?;
        for p in &due {
            fs::remove_file(p).map_err(AuditError::io(p))?;
        }
        self.first_seq = kept.0;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(AuditError::io(&self.dir))?;
        Ok(Some(seq))
    }

    /// The checkpoints written since the last call, for publishing off the host.
    pub fn take_anchors(&mut self) -> Vec<Checkpoint> {
        std::mem::take(&mut self.anchors)
    }

    /// The public key the next checkpoint will be signed with.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Appends an attributed event. Returns its seq.
    pub fn append_event(&mut self, event: &AttributedEvent) -> Result<u64, AuditError> {
        self.append_json("event", serde_json::to_value(event)?)
    }

    /// Appends an attributed event already in canonical JSON (the daemon's outputs encode
    /// each event once, for the store, this log and the followers). Returns its seq.
    pub fn append_event_text(&mut self, canonical_body: &str) -> Result<u64, AuditError> {
        let seq = self.write_text("event", canonical_body)?;
        self.after_append()?;
        Ok(seq)
    }

    /// Chains an event already in canonical JSON and keeps its line for the next
    /// [`Self::flush`], which writes every buffered record with one `write` (the audit
    /// thread buffers what its queue holds, then flushes). Returns its seq. A record is
    /// on disk only once flushed; [`Self::needs_flush`] says when a flush is due (a full
    /// batch, a rotation, `fsync = every-record`).
    pub fn buffer_event_text(&mut self, canonical_body: &str) -> Result<u64, AuditError> {
        Ok(self.encode_text("event", canonical_body, true))
    }

    /// [`Self::buffer_event_text`] for an alert.
    pub fn buffer_alert(&mut self, alert: &Alert) -> Result<u64, AuditError> {
        self.buffer_json("alert", &serde_json::to_value(alert)?)
    }

    /// [`Self::buffer_event_text`] for a record of any type (as [`Self::append_json`]).
    pub fn buffer_json(&mut self, ty: &str, body: &Value) -> Result<u64, AuditError> {
        check_type(ty)?;
        Ok(self.encode_text(ty, &super::canonical(body), true))
    }

    /// Whether buffered records should be written now.
    pub fn needs_flush(&self) -> bool {
        let pending = self.batch.bytes.len();
        pending >= BATCH_BYTES
            || (pending > 0
                && (self.file_bytes + pending as u64 >= self.opts.rotate_bytes
                    || self.opts.fsync == Fsync::EveryRecord))
    }

    /// Writes the buffered records (one `write`), then rotates if the file is full.
    pub fn flush(&mut self) -> Result<(), AuditError> {
        self.write_batch()?;
        if self.opts.fsync == Fsync::EveryRecord {
            self.sync()?;
        }
        if self.file_bytes >= self.opts.rotate_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Buffered records written and lost since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// Appends an alert: both its creation and every update (count, `last_seen`).
    pub fn append_alert(&mut self, alert: &Alert) -> Result<u64, AuditError> {
        self.append_json("alert", serde_json::to_value(alert)?)
    }

    /// Appends a record of any type (lowercase letters, digits, `-`, `_`). Returns its seq.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "the body becomes the record's: callers hand over json!(..) values"
    )]
    pub fn append_json(&mut self, ty: &str, body: Value) -> Result<u64, AuditError> {
        check_type(ty)?;
        let seq = self.write_record(ty, &body)?;
        self.after_append()?;
        Ok(seq)
    }

    /// A checkpoint or a rotation when one is due.
    fn after_append(&mut self) -> Result<(), AuditError> {
        self.maybe_checkpoint(Instant::now())?;
        if self.file_bytes >= self.opts.rotate_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Writes a checkpoint if the interval has passed since the last one (and there is
    /// anything to sign), and syncs if an [`Fsync::Interval`] is due. Returns the
    /// checkpoint's seq when one was written.
    pub fn maybe_checkpoint(&mut self, now: Instant) -> Result<Option<u64>, AuditError> {
        let mut written = None;
        if now.saturating_duration_since(self.last_checkpoint_at) >= self.opts.checkpoint_interval {
            self.last_checkpoint_at = now;
            written = self.checkpoint()?;
            // Age retention on a log too quiet to rotate. A failure costs disk, not
            // records: reported, and tried again at the next checkpoint.
            if let Err(e) = self.prune(SystemTime::now()) {
                tracing::warn!(error = %e, "pruning the audit log");
            }
        }
        if let Fsync::Interval(every) = self.opts.fsync
            && self.dirty
            && now.saturating_duration_since(self.last_sync) >= every
        {
            self.sync()?;
        }
        Ok(written)
    }

    /// Signs the chain head now (and syncs). `None` when nothing was appended since the
    /// last checkpoint.
    pub fn checkpoint(&mut self) -> Result<Option<u64>, AuditError> {
        if self.last_type.is_none() || self.last_type.as_deref() == Some("checkpoint") {
            return Ok(None);
        }
        let seq = self.write_checkpoint(false)?;
        self.sync()?;
        Ok(Some(seq))
    }

    /// Writes the final checkpoint (`"final": true`) and syncs. A log whose last record is
    /// a final checkpoint was closed cleanly: `verify --expect-closed` relies on it.
    pub fn close(mut self) -> Result<(), AuditError> {
        self.finish()
    }

    /// What [`AuditLog::close`] does, leaving the log for [`AuditLog::take_anchors`].
    pub fn finish(&mut self) -> Result<(), AuditError> {
        if self.last_type.is_some() && !self.last_final {
            self.write_checkpoint(true)?;
        }
        self.sync()
    }

    /// The seq of the first record on disk: `next_seq() - first_seq()` records are held.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The seq the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last record (the chain head).
    pub fn head(&self) -> &str {
        &self.prev
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write_checkpoint(&mut self, is_final: bool) -> Result<u64, AuditError> {
        let seq_to = self.next_seq - 1;
        // Forward security: the next key exists, synced, before the checkpoint that hands
        // over to it, and replaces the key file only after that checkpoint is synced.
        if self.uncommitted
            && let Some(kf) = &self.key_file
        {
            let path = kf.path.clone();
            self.sync()?;
            key::commit_staged(&path)?;
            self.uncommitted = false;
        }
        let next = match &self.key_file {
            Some(kf) => {
                let next = key::generate()?;
                key::stage(&kf.path, &next, &kf.origin)?;
                Some(next)
            }
            None => None,
        };
        let next_pk = next.as_ref().map(|k| public_key_base64(&k.verifying_key()));
        let signature = sign_checkpoint_next(&self.key, &self.prev, seq_to, next_pk.as_deref())
            .ok_or_else(|| AuditError::Corrupt {
                path: self.path.clone(),
                line: 0,
                reason: format!("chain head {:?} is not a SHA-256 hex digest", self.prev),
            })?;
        let mut body = json!({
            "seq_from": self.unsigned_from,
            "seq_to": seq_to,
            "head": self.prev,
            "signature": signature,
            "public_key": self.public_key,
        });
        if let Some(n) = &next_pk {
            body["next_public_key"] = Value::String(n.clone());
        }
        if is_final {
            body["final"] = Value::Bool(true);
        }
        let seq = self.write_record("checkpoint", &body)?;
        self.unsigned_from = seq_to + 1;
        self.last_final = is_final;
        self.anchors.push(Checkpoint {
            seq,
            seq_to,
            head: body["head"].as_str().unwrap_or_default().to_owned(),
            time: self.last_ts.clone(),
            signature,
            public_key: self.public_key.clone(),
            next_public_key: next_pk.clone(),
            is_final,
        });
        let key_path = self.key_file.as_ref().map(|kf| kf.path.clone());
        if let (Some(next), Some(next_pk), Some(key_path)) = (next, next_pk, key_path) {
            // The log now names the next key: sign with it from here on, whatever happens
            // to the files (the next checkpoint or the next open finishes the replacement
            // from `<key>.next`). The old key is zeroized as it drops.
            self.key = next;
            self.public_key = next_pk;
            self.uncommitted = true;
            // Synced first: the key file never moves ahead of the log on disk.
            self.sync()?;
            key::commit_staged(&key_path)?;
            self.uncommitted = false;
        }
        Ok(seq)
    }

    /// One record, written with what is buffered before it: a crashed daemon leaves whole
    /// lines or one torn last line.
    fn write_record(&mut self, ty: &str, body: &Value) -> Result<u64, AuditError> {
        self.write_text(ty, &super::canonical(body))
    }

    /// [`Self::write_record`] for a body already in canonical JSON.
    fn write_text(&mut self, ty: &str, body: &str) -> Result<u64, AuditError> {
        let seq = self.encode_text(ty, body, false);
        self.write_batch()?;
        if self.opts.fsync == Fsync::EveryRecord {
            self.sync()?;
        }
        Ok(seq)
    }

    /// Chains a record and adds its line to the batch. `counted`: a buffered record (see
    /// [`Counts`]); the others are written before their call returns.
    fn encode_text(&mut self, ty: &str, body: &str, counted: bool) -> u64 {
        let seq = self.next_seq;
        let ts = now_rfc3339(SystemTime::now());
        let batch = &mut self.batch;
        if batch.base.is_none() {
            batch.base = Some((
                self.prev.clone(),
                self.last_type.clone(),
                self.last_final,
                self.last_ts.clone(),
            ));
        }
        let hash = encode_record_into(&mut batch.bytes, seq, &ts, ty, body, &self.prev);
        batch.bytes.push(b'\n');
        batch.ends.push((batch.bytes.len(), counted));
        self.next_seq += 1;
        self.prev.clear();
        // Hex digits are ASCII.
        self.prev.extend(hash.iter().map(|&b| char::from(b)));
        if self.last_type.as_deref() != Some(ty) {
            self.last_type = Some(ty.to_owned());
        }
        self.last_final = false;
        self.last_ts = ts;
        seq
    }

    /// Writes the batch: one `write` (more only if the kernel takes part of it). On a
    /// failure the file is cut back to the last whole line that reached it, the chain
    /// continues from that record, and the records after it are lost (counted): the file
    /// never holds a record the chain in memory does not follow.
    fn write_batch(&mut self) -> Result<(), AuditError> {
        if self.batch.ends.is_empty() {
            return Ok(());
        }
        let mut done = 0;
        let mut failure = None;
        while done < self.batch.bytes.len() {
            match self.file.write(&self.batch.bytes[done..]) {
                Ok(0) => {
                    failure = Some(std::io::Error::from(std::io::ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let batch = std::mem::take(&mut self.batch);
        // Reuse the buffers: no allocation per batch.
        let Batch {
            mut bytes,
            mut ends,
            base,
        } = batch;
        let whole = ends.iter().take_while(|(end, _)| *end <= done).count();
        let whole_bytes = whole.checked_sub(1).map_or(0, |i| ends[i].0);
        for (i, (_, counted)) in ends.iter().enumerate() {
            if *counted {
                if i < whole {
                    self.counts.written += 1;
                } else {
                    self.counts.lost += 1;
                }
            }
        }
        if whole_bytes > 0 {
            self.dirty = true;
        }
        let result = match failure {
            None => Ok(()),
            Some(e) => {
                if done > whole_bytes {
                    // A torn line: cut it, or the next open will.
                    let _ = self.file.set_len(self.file_bytes + whole_bytes as u64);
                }
                self.rewind(&bytes[..whole_bytes], ends.len() - whole, base);
                Err(AuditError::io(&self.path)(e))
            }
        };
        self.file_bytes += whole_bytes as u64;
        bytes.clear();
        ends.clear();
        self.batch.bytes = bytes;
        self.batch.ends = ends;
        result
    }

    /// The chain back to the last record in `written` (or to `base`, before the batch):
    /// `unwritten` records after it never reached the file.
    fn rewind(
        &mut self,
        written: &[u8],
        unwritten: usize,
        base: Option<(String, Option<String>, bool, String)>,
    ) {
        self.next_seq -= unwritten as u64;
        let last = written
            .strip_suffix(b"\n")
            .map(|w| w.rsplit(|&b| b == b'\n').next().unwrap_or(w));
        match last.and_then(|line| parse_head(line).map(|h| (h, line))) {
            Some((head, line)) => {
                self.prev = head.hash;
                self.last_type = Some(head.ty);
                self.last_final = head.is_final;
                self.last_ts = serde_json::from_slice::<Value>(line)
                    .ok()
                    .and_then(|v| v.get("ts").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default();
            }
            None => {
                if let Some((prev, ty, is_final, ts)) = base {
                    self.prev = prev;
                    self.last_type = ty;
                    self.last_final = is_final;
                    self.last_ts = ts;
                }
            }
        }
    }

    fn sync(&mut self) -> Result<(), AuditError> {
        self.write_batch()?;
        if self.dirty {
            self.file.sync_data().map_err(AuditError::io(&self.path))?;
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Ends `audit.log` with a `rotate` record, renames it to the next `audit-NNNNNN.log`
    /// and starts a new `audit.log` whose first record chains to the rotate record.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let to = archive_name(self.next_archive);
        self.write_record(
            "rotate",
            &json!({"file": CURRENT_FILE, "renamed_to": to, "bytes": self.file_bytes}),
        )?;
        self.rename_and_reopen()
    }

    fn rename_and_reopen(&mut self) -> Result<(), AuditError> {
        self.sync()?;
        let to = self.dir.join(archive_name(self.next_archive));
        fs::rename(&self.path, &to).map_err(AuditError::io(&to))?;
        self.next_archive += 1;
        self.file = open_append(&self.path)?;
        self.file_bytes = 0;
        // The rename and the new file must survive a host crash together.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(AuditError::io(&self.dir))?;
        // The archive is closed for good: compress it. A failure leaves it plain (every
        // reader takes both forms) and the next open tries again.
        if self.disk.compress
            && let Err(e) = segments::compress(&self.dir, &to)
        {
            tracing::warn!(error = %e, "compressing audit archive {}", to.display());
        }
        if let Err(e) = self.prune(SystemTime::now()) {
            tracing::warn!(error = %e, "pruning the audit log");
        }
        Ok(())
    }
}

/// Record types: lowercase letters, digits, `-`, `_`.
fn check_type(ty: &str) -> Result<(), AuditError> {
    if ty.is_empty()
        || !ty
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(AuditError::BadType(ty.to_owned()));
    }
    Ok(())
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(sys::O_NOFOLLOW | sys::O_CLOEXEC)
        .open(path)
        .map_err(AuditError::io(path))
}

/// The seq and `prev` of a file's first record.
fn first_record(path: &Path) -> Result<Option<(u64, String)>, AuditError> {
    let line = segments::first_line(path)?;
    if line.is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&line).map_err(|e| AuditError::Corrupt {
        path: path.to_owned(),
        line: 1,
        reason: format!("not a record ({e})"),
    })?;
    Ok(v.get("seq")
        .and_then(Value::as_u64)
        .zip(v.get("prev").and_then(Value::as_str).map(str::to_owned)))
}

/// The seq and hash of a line that parses as a record.
fn parse_head(line: &[u8]) -> Option<Head> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let ty = v.get("type")?.as_str()?.to_owned();
    let hash = v.get("hash")?.as_str()?.to_owned();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Head {
        seq: v.get("seq")?.as_u64()?,
        hash,
        is_final: ty == "checkpoint"
            && v.pointer("/body/final").and_then(Value::as_bool) == Some(true),
        ty,
    })
}

/// Cuts a torn last line (no `\n`, or not a record) off `path`. Returns (file, offset,
/// bytes removed) when it did.
fn cut_torn_tail(path: &Path) -> Result<Option<(String, u64, u64)>, AuditError> {
    let data = fs::read(path).map_err(AuditError::io(path))?;
    let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut cut = whole;
    if whole > 0 {
        let start = data[..whole - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if parse_head(&data[start..whole - 1]).is_none() {
            cut = start;
        }
    }
    if cut == data.len() {
        return Ok(None);
    }
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(sys::O_NOFOLLOW | sys::O_CLOEXEC)
        .open(path)
        .map_err(AuditError::io(path))?;
    f.set_len(cut as u64).map_err(AuditError::io(path))?;
    f.sync_all().map_err(AuditError::io(path))?;
    Ok(Some((
        file_name(path),
        cut as u64,
        (data.len() - cut) as u64,
    )))
}

/// The last record of the log, and the first seq after the last checkpoint (checking the
/// checkpoint was signed by our key).
fn scan_back(
    dir: &Path,
    files: &[PathBuf],
    public_key: &str,
) -> Result<(Option<Head>, Option<u64>), AuditError> {
    let mut head = None;
    let mut oldest_seq = None;
    for path in files.iter().rev() {
        let data = segments::read(path)?;
        for (i, line) in data
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .into_iter()
            .enumerate()
            .rev()
        {
            let Some(h) = parse_head(line) else {
                // Damage before the end (the torn end is already cut) stays where it is,
                // for `verify` to report: refusing to start would let whoever can write
                // one bad line stop the audit trail.
                tracing::warn!(
                    "audit {}:{}: not an audit record; run `agentid audit verify`",
                    path.display(),
                    i + 1
                );
                continue;
            };
            oldest_seq = Some(h.seq);
            if h.ty == "checkpoint" {
                let v: Value = serde_json::from_slice(line)?;
                // The key this checkpoint hands over to (forward-secure), or its own.
                let found = v
                    .pointer("/body/next_public_key")
                    .or_else(|| v.pointer("/body/public_key"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if found != public_key {
                    return Err(AuditError::KeyChanged {
                        dir: dir.to_owned(),
                        found: found.to_owned(),
                        ours: public_key.to_owned(),
                    });
                }
                let seq_to = v.pointer("/body/seq_to").and_then(Value::as_u64);
                let head = head.or(Some(h));
                return Ok((head, seq_to.map(|s| s + 1)));
            }
            if head.is_none() {
                head = Some(h);
            }
        }
    }
    Ok((head, oldest_seq))
}

#[cfg(test)]
#[path = "tests_batch.rs"]
mod tests_batch;
