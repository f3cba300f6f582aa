//! Herald's write-ahead log: the durability point of the embedded store.
//!
//! It exists so that acknowledging an event costs one sequential append and one `fdatasync`
//! of a small file, while SQLite maintains its indexes in large transactions that span many
//! requests (each SQLite commit rewrites every index page it touched, so few large commits are
//! far cheaper than many small ones). Every record is the canonical JSON of a stored event,
//! which carries its `seq`; after a crash, the records past SQLite's last committed `seq` are
//! inserted again. Once SQLite has durably committed everything in the log, the log is
//! truncated.
//!
//! Record layout: `len: u32 LE | crc32(body): u32 LE | body (len bytes)`. A torn or corrupt
//! record ends the log: it can only be the last write of a crashed process, which was never
//! acknowledged because its `fdatasync` did not return.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub struct Log {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    len: u64,
}

impl Log {
    /// Opens (creating) the log file.
    pub fn open(path: &Path) -> io::Result<Log> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(false)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.seek(SeekFrom::End(0))?;
        Ok(Log {
            file,
            path: path.to_owned(),
            buf: Vec::with_capacity(1 << 20),
            len,
        })
    }

    /// Reads every intact record from the start; truncates a torn tail.
    pub fn records(&mut self) -> io::Result<Vec<String>> {
        let mut data = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut data)?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos + 8 <= data.len() {
            let len =
                u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap_or_default());
            let Some(body) = data.get(pos + 8..pos + 8 + len) else {
                break;
            };
            if crc32fast::hash(body) != crc {
                break;
            }
            match std::str::from_utf8(body) {
                Ok(s) => out.push(s.to_owned()),
                Err(_) => break,
            }
            pos += 8 + len;
        }
        if (pos as u64) < data.len() as u64 {
            tracing::warn!(
                path = %self.path.display(),
                kept = pos,
                dropped = data.len() - pos,
                "the write-ahead log ends with a torn record (an unacknowledged write cut by a crash); dropping it"
            );
            self.file.set_len(pos as u64)?;
        }
        self.len = self.file.seek(SeekFrom::End(0))?;
        Ok(out)
    }

    /// Buffers one record.
    pub fn push(&mut self, body: &str) {
        self.buf
            .extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&crc32fast::hash(body.as_bytes()).to_le_bytes());
        self.buf.extend_from_slice(body.as_bytes());
    }

    /// Writes the buffered records and, with `fsync`, waits until they are on disk (without it
    /// they survive a crash of the process but not of the machine).
    pub fn sync(&mut self, fsync: bool) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.seek(SeekFrom::Start(self.len))?;
            self.file.write_all(&self.buf)?;
            self.len += self.buf.len() as u64;
            self.buf.clear();
        }
        if fsync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Forgets buffered records that were not synced (their batch failed).
    pub fn discard_unsynced(&mut self) {
        self.buf.clear();
    }

    /// Empties the log once SQLite holds (durably) everything in it.
    pub fn truncate(&mut self) -> io::Result<()> {
        self.buf.clear();
        self.file.set_len(0)?;
        self.len = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let mut log = Log::open(&path).unwrap();
        log.push(r#"{"seq":1}"#);
        log.push(r#"{"seq":2}"#);
        log.sync(true).unwrap();
        log.push(r#"{"seq":3}"#);
        log.discard_unsynced();
        drop(log);
        // A crash in the middle of the next write leaves half a record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
        drop(f);
        let mut log = Log::open(&path).unwrap();
        assert_eq!(log.records().unwrap(), [r#"{"seq":1}"#, r#"{"seq":2}"#]);
        log.push(r#"{"seq":4}"#);
        log.sync(true).unwrap();
        assert_eq!(
            log.records().unwrap().len(),
            3,
            "appends continue after the cut"
        );
        log.truncate().unwrap();
        assert!(Log::open(&path).unwrap().records().unwrap().is_empty());
    }
}
