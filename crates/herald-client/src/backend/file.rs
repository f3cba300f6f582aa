//! NDJSON file backend with size-based rotation: a local record of events that a log
//! shipper can pick up, or a fallback destination. `events.ndjson` is the current file;
//! when it passes the size limit it becomes `events.ndjson.1` (the older ones shift up to
//! `keep`, the oldest is deleted).

use super::Backend;
use crate::event::Event;
use crate::stats::Stats;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Appends events to an NDJSON file, rotating it by size.
///
/// ```
/// use herald_client::{FileBackend, Tracker};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("events.ndjson");
/// let tracker = Tracker::builder("/docs")
///     .backend(FileBackend::new(&path).max_bytes(1 << 20).keep(3))
///     .build()
///     .unwrap();
/// tracker.emit("doc.saved", serde_json::json!({"n": 1}));
/// tracker.shutdown(std::time::Duration::from_secs(5));
/// let text = std::fs::read_to_string(&path).unwrap();
/// assert!(text.contains("\"doc.saved\""));
/// ```
pub struct FileBackend {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<BufWriter<File>>,
    size: u64,
    stats: Option<Arc<Stats>>,
    line: Vec<u8>,
}

impl FileBackend {
    pub fn new(path: impl AsRef<Path>) -> FileBackend {
        FileBackend {
            path: path.as_ref().to_owned(),
            max_bytes: 64 << 20,
            keep: 5,
            file: None,
            size: 0,
            stats: None,
            line: Vec::new(),
        }
    }

    /// Rotate when the file passes this size (default 64 MiB).
    pub fn max_bytes(mut self, n: u64) -> FileBackend {
        self.max_bytes = n.max(1);
        self
    }

    /// How many rotated files to keep (default 5).
    pub fn keep(mut self, n: usize) -> FileBackend {
        self.keep = n;
        self
    }

    fn open(&mut self) -> std::io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = f.metadata()?.len();
        self.file = Some(BufWriter::with_capacity(1 << 16, f));
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.open()
    }

    fn write(&mut self, events: &[Arc<Event>]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.open()?;
        }
        for e in events {
            self.line.clear();
            e.write_json(&mut self.line);
            self.line.push(b'\n');
            if self.size > 0 && self.size + self.line.len() as u64 > self.max_bytes {
                self.rotate()?;
            }
            if let Some(f) = self.file.as_mut() {
                f.write_all(&self.line)?;
            }
            self.size += self.line.len() as u64;
        }
        if let Some(f) = self.file.as_mut() {
            f.flush()?;
        }
        Ok(())
    }
}

impl Backend for FileBackend {
    fn name(&self) -> &str {
        "file"
    }

    fn start(&mut self, stats: Arc<Stats>) -> Result<(), crate::Error> {
        self.stats = Some(stats);
        self.open()
            .map_err(|e| crate::Error::Io(format!("{}: {e}", self.path.display())))
    }

    fn send(&mut self, events: &[Arc<Event>]) {
        let r = self.write(events);
        if let Some(s) = &self.stats {
            match r {
                Ok(()) => s.add_sent(events.len() as u64),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot write events");
                    s.add_backend_error(events.len() as u64);
                    self.file = None;
                }
            }
        }
    }

    fn flush(&mut self, _deadline: Instant) -> u64 {
        if let Some(f) = self.file.as_mut() {
            let _ = f.flush();
            let _ = f.get_ref().sync_data();
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ev.ndjson");
        let mut b = FileBackend::new(&path).max_bytes(600).keep(2);
        b.start(Arc::new(Stats::default())).unwrap();
        for i in 0..20 {
            let mut e = Event::new("file.test", "/t".into());
            e.data = Some(serde_json::json!({ "i": i }));
            b.send(&[Arc::new(e)]);
        }
        b.flush(Instant::now());
        assert!(path.exists());
        assert!(b.rotated(1).exists() && b.rotated(2).exists());
        assert!(!b.rotated(3).exists());
        for p in [path.clone(), b.rotated(1), b.rotated(2)] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.len() <= 600, "{}", text.len());
            for l in text.lines() {
                serde_json::from_str::<serde_json::Value>(l).unwrap();
            }
        }
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.contains("\"i\":19"));
    }
}
