//! Local outputs: a rotated JSON-lines file and standard output.
use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::PathBuf,
};

use super::{Deliver, DeliveryError, ItemOutcome};
use crate::outputs::spool::Record;

/// JSON lines with size-based rotation (`path`, `path.1` .. `path.<keep>`).
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<(File, u64)>,
}

impl FileSink {
    pub fn new(path: PathBuf, max_bytes: u64, keep: u32) -> Self {
        Self {
            path,
            max_bytes,
            keep,
            file: None,
        }
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            return fs::remove_file(&self.path);
        }
        let _ = fs::remove_file(self.numbered(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.numbered(n);
            if from.exists() {
                fs::rename(&from, self.numbered(n + 1))?;
            }
        }
        fs::rename(&self.path, self.numbered(1))
    }

    fn write(&mut self, batch: &[Record]) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent() {
            fs::create_dir_all(parent)?;
        }
        for r in batch {
            let len = r.payload.len() as u64 + 1;
            if self.file.is_none() {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                let size = f.metadata()?.len();
                self.file = Some((f, size));
            }
            if let Some((_, size)) = &self.file
                && *size > 0
                && size + len > self.max_bytes
            {
                self.rotate()?;
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                self.file = Some((f, 0));
            }
            if let Some((f, size)) = &mut self.file {
                let mut line = Vec::with_capacity(r.payload.len() + 1);
                line.extend_from_slice(r.payload.as_bytes());
                line.push(b'\n');
                f.write_all(&line)?;
                *size += len;
            }
        }
        if let Some((f, _)) = &self.file {
            f.sync_data()?;
        }
        Ok(())
    }
}

impl Deliver for FileSink {
    async fn deliver(&mut self, batch: &[Record]) -> Result<Vec<ItemOutcome>, DeliveryError> {
        match self.write(batch) {
            Ok(()) => Ok(vec![ItemOutcome::Delivered; batch.len()]),
            Err(e) => {
                // Reopen next time: the file may have been moved or the disk freed.
                self.file = None;
                Err(DeliveryError::Transient(format!(
                    "{}: {e}",
                    self.path.display()
                )))
            }
        }
    }
}

/// JSON lines on standard output.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl Deliver for StdoutSink {
    async fn deliver(&mut self, batch: &[Record]) -> Result<Vec<ItemOutcome>, DeliveryError> {
        let mut out = Vec::new();
        for r in batch {
            out.extend_from_slice(r.payload.as_bytes());
            out.push(b'\n');
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&out)
            .and_then(|()| stdout.flush())
            .map_err(|e| DeliveryError::Transient(format!("stdout: {e}")))?;
        Ok(vec![ItemOutcome::Delivered; batch.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotates_by_size() {
        let dir = std::env::temp_dir().join(format!("agentid-filesink-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("a.jsonl");
        let mut s = FileSink::new(path.clone(), 100, 2);
        let rec = |i: u32| Record {
            uid: i.to_string(),
            payload: format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(30)),
        };
        for i in 0..8 {
            assert_eq!(
                s.deliver(&[rec(i)]).await.unwrap(),
                vec![ItemOutcome::Delivered]
            );
        }
        // 44-byte lines, 2 per file: 8 records → a.jsonl (6,7), .1 (4,5), .2 (2,3); 0,1 gone.
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert!(read(path.clone()).contains("\"n\":7"));
        assert!(read(s.numbered(1)).contains("\"n\":4"));
        assert!(read(s.numbered(2)).contains("\"n\":2"));
        assert!(!s.numbered(3).exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
