//! The write-ahead log of earlier versions, kept to read it once: before event segments
//! (see `segment`), acknowledged events were appended here and their bodies stored in SQLite
//! afterwards. A data directory that still has `events.log` or `events.log.1` gets their
//! records past SQLite's last `seq` inserted at start, then the files are removed (see
//! `sqlite::replay_legacy_logs`). Writing is compiled for tests only, to make such logs.
//!
//! Layout: a 16-byte header (`HLOG0001` and the generation, a u64 LE), then records
//! `len: u32 LE | crc32(generation LE ++ body): u32 LE | body (len bytes)`. A record that
//! does not check out ends the log: it is either the torn last write of a crashed process
//! (never acknowledged, because its `fdatasync` did not return) or a leftover of an older
//! generation.
//!
//! Emptying the log does not shrink the file: it bumps the generation in the header and
//! writes from the start again, over the old records (which no longer check out). Once the
//! file has reached its working size, appends overwrite blocks that already exist, so an
//! `fdatasync` flushes data only and needs no file-system journal commit; a journal commit
//! would wait for every other file's pending writes (SQLite's checkpoints), which is what
//! made acknowledgements stall for tens of milliseconds.
//!
//! Logs written by earlier versions (records without header, CRC of the body alone) are
//! still read; the first reset converts the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"HLOG0001";
const HEADER: u64 = 16;

pub struct Log {
    file: File,
    path: PathBuf,
    #[cfg(test)]
    buf: Vec<u8>,
    /// Where the next record goes.
    pos: u64,
    generation: u64,
    /// The file has no header yet (a legacy log): the next reset writes one.
    legacy: bool,
}

fn record_crc(generation: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&generation.to_le_bytes());
    h.update(body);
    h.finalize()
}

impl Log {
    /// Opens (creating) the log file.
    pub fn open(path: &Path) -> io::Result<Log> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut head = [0u8; HEADER as usize];
        let size = file.seek(SeekFrom::End(0))?;
        let mut log = Log {
            file,
            path: path.to_owned(),
            #[cfg(test)]
            buf: Vec::with_capacity(1 << 20),
            pos: HEADER,
            generation: 1,
            legacy: false,
        };
        if size == 0 {
            log.write_header()?;
        } else {
            log.file.seek(SeekFrom::Start(0))?;
            let n = log.file.read(&mut head)?;
            if n == head.len() && &head[..8] == MAGIC {
                log.generation = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
            } else {
                log.legacy = true;
                log.pos = 0;
            }
        }
        Ok(log)
    }

    fn write_header(&mut self) -> io::Result<()> {
        let mut head = [0u8; HEADER as usize];
        head[..8].copy_from_slice(MAGIC);
        head[8..].copy_from_slice(&self.generation.to_le_bytes());
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&head)
    }

    /// Reads every intact record of the current generation, and places the write position
    /// after them.
    pub fn records(&mut self) -> io::Result<Vec<String>> {
        let mut data = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut data)?;
        let mut out = Vec::new();
        let mut pos = if self.legacy { 0 } else { HEADER as usize };
        while pos + 8 <= data.len() {
            let len =
                u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap_or_default());
            let Some(body) = data.get(pos + 8..pos + 8 + len) else {
                break;
            };
            let expected = if self.legacy {
                crc32fast::hash(body)
            } else {
                record_crc(self.generation, body)
            };
            if expected != crc {
                break;
            }
            match std::str::from_utf8(body) {
                Ok(s) => out.push(s.to_owned()),
                Err(_) => break,
            }
            pos += 8 + len;
        }
        if self.legacy && pos < data.len() {
            tracing::warn!(
                path = %self.path.display(),
                kept = pos,
                dropped = data.len() - pos,
                "the write-ahead log ends with a torn record (an unacknowledged write cut by a crash); dropping it"
            );
            self.file.set_len(pos as u64)?;
        }
        self.pos = pos as u64;
        Ok(out)
    }

    #[cfg(test)]
    /// Buffers one record.
    pub fn push(&mut self, body: &str) {
        let crc = if self.legacy {
            crc32fast::hash(body.as_bytes())
        } else {
            record_crc(self.generation, body.as_bytes())
        };
        self.buf
            .extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf.extend_from_slice(body.as_bytes());
    }

    #[cfg(test)]
    /// Writes the buffered records and, with `fsync`, waits until they are on disk (without it
    /// they survive a crash of the process but not of the machine).
    ///
    /// On failure nothing of the batch counts: the write position stays where it was, so
    /// the next batch overwrites whatever reached the file (its seqs are handed out again,
    /// and a replay must not find the failed records before the acknowledged ones).
    pub fn sync(&mut self, fsync: bool) -> io::Result<()> {
        let start = self.pos;
        if !self.buf.is_empty() {
            self.file.seek(SeekFrom::Start(start))?;
            self.file.write_all(&self.buf)?;
        }
        if fsync {
            self.file.sync_data()?;
        }
        self.pos = start + self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    #[cfg(test)]
    /// Forgets buffered records that were not synced (their batch failed).
    pub fn discard_unsynced(&mut self) {
        self.buf.clear();
    }

    /// Empties the log once SQLite holds (durably) everything in it: a new generation
    /// starts at the beginning of the file. The new header reaches the disk with the first
    /// records of the generation (same `fdatasync`), before any of them is acknowledged.
    #[cfg(test)]
    pub fn truncate(&mut self) -> io::Result<()> {
        self.buf.clear();
        if self.legacy {
            self.file.set_len(0)?;
            self.legacy = false;
        }
        self.generation += 1;
        self.write_header()?;
        self.pos = HEADER;
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
        let size_before = std::fs::metadata(&path).unwrap().len();
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
        // A reset keeps the file's blocks; the next generation overwrites them, and the
        // older records beyond its end do not come back.
        log.push(r#"{"seq":5}"#);
        log.sync(true).unwrap();
        drop(log);
        assert!(std::fs::metadata(&path).unwrap().len() >= size_before - 9);
        let mut log = Log::open(&path).unwrap();
        assert_eq!(log.records().unwrap(), [r#"{"seq":5}"#]);
    }

    #[test]
    fn a_log_from_an_earlier_version_is_read_and_converted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let mut old = Vec::new();
        for body in [r#"{"seq":1}"#, r#"{"seq":2}"#] {
            old.extend_from_slice(&(body.len() as u32).to_le_bytes());
            old.extend_from_slice(&crc32fast::hash(body.as_bytes()).to_le_bytes());
            old.extend_from_slice(body.as_bytes());
        }
        std::fs::write(&path, &old).unwrap();
        let mut log = Log::open(&path).unwrap();
        assert_eq!(log.records().unwrap(), [r#"{"seq":1}"#, r#"{"seq":2}"#]);
        log.truncate().unwrap();
        log.push(r#"{"seq":3}"#);
        log.sync(true).unwrap();
        let mut log = Log::open(&path).unwrap();
        assert_eq!(log.records().unwrap(), [r#"{"seq":3}"#]);
    }
}
