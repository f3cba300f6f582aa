//! The on-disk spool of the HTTP backend: events wait here, in order, until Herald has
//! answered for each of them, so that an outage or a crash of this process loses nothing
//! that was spooled.
//!
//! Layout: a directory of append-only segment files (`00000000000000000007.seg`), each a
//! sequence of records `len: u32 LE | crc32(body): u32 LE | body` where the body is one event
//! as JSON, and a `cursor` file naming the first record not yet answered (`segment offset`).
//!
//! - **Order**: records are read and sent in the order they were written; one batch is in
//!   flight at a time, and the cursor moves past a batch only when the server has answered
//!   for every event in it (stored, duplicate, rejected or conflict). Segments entirely
//!   before the cursor are deleted.
//! - **Crash**: a write cut short by a crash leaves a torn last record; on open, every record
//!   past the cursor is checked (length and CRC) and a segment is truncated at its first bad
//!   record. A crash after the server stored a batch but before the cursor moved resends that
//!   batch: the events keep their ids, so the server answers `duplicate`, not a second copy.
//! - **fsync policy** ([`Fsync`]): a write reaches the operating system before `send`
//!   returns, which is enough to survive the process being killed. Surviving a machine crash
//!   needs the data on disk: by default segments are `fdatasync`ed at most once a second
//!   (and at flush and close), so a power loss can cost the last second; `Fsync::Always`
//!   syncs every batch. The cursor is not synced: losing its last move only resends.
//! - **Bound**: the bytes not yet answered are limited to `max_bytes`; when an append would
//!   pass it, the new events are refused and counted (`dropped.spool_full`): the oldest,
//!   already waiting, keep their place.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest record accepted on reading (a larger length is taken for corruption).
const MAX_RECORD: u32 = 64 << 20;
const HEADER: u64 = 8;

/// When the spool's segments are synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every appended batch (slowest; survives a power loss with nothing lost).
    Always,
    /// At most this often, and at flush and close.
    Interval(Duration),
    /// Never explicitly (survives a killed process, not a machine crash).
    Never,
}

impl Default for Fsync {
    fn default() -> Self {
        Fsync::Interval(Duration::from_secs(1))
    }
}

/// Where and how big the spool is.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Bytes of events not yet answered by the server (default 1 GiB).
    pub max_bytes: u64,
    /// Size after which a new segment file starts (default 16 MiB).
    pub segment_bytes: u64,
    pub fsync: Fsync,
}

impl SpoolConfig {
    pub fn new(dir: impl AsRef<Path>) -> SpoolConfig {
        SpoolConfig {
            dir: dir.as_ref().to_owned(),
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            fsync: Fsync::default(),
        }
    }
}

/// A position in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub seg: u64,
    pub off: u64,
}

/// The spool. Not thread-safe by itself; the HTTP backend keeps it behind a mutex.
pub struct Spool {
    cfg: SpoolConfig,
    /// Segment numbers and lengths, oldest first; the last is the one written to.
    segments: VecDeque<(u64, u64)>,
    writer: File,
    head: Pos,
    records: u64,
    bytes: u64,
    dirty: bool,
    last_sync: Instant,
    reader: Option<(u64, File)>,
    /// Records cut from torn or corrupt tails when opening.
    pub truncated: u64,
}

/// What [`Spool::append`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub written: u64,
    /// Refused because the spool was full.
    pub refused: u64,
}

fn seg_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.seg"))
}

impl Spool {
    /// Opens (or creates) the spool, checking and repairing the records not yet answered.
    pub fn open(cfg: SpoolConfig) -> std::io::Result<Spool> {
        std::fs::create_dir_all(&cfg.dir)?;
        let mut nums: Vec<u64> = std::fs::read_dir(&cfg.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_suffix(".seg")?.parse::<u64>().ok()
            })
            .collect();
        nums.sort_unstable();
        let cursor = std::fs::read_to_string(cfg.dir.join("cursor"))
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace();
                Some(Pos {
                    seg: it.next()?.parse().ok()?,
                    off: it.next()?.parse().ok()?,
                })
            });
        let mut head = match (cursor, nums.first()) {
            (Some(c), _) => c,
            (None, Some(&first)) => Pos { seg: first, off: 0 },
            (None, None) => Pos::default(),
        };
        // Segments before the cursor were answered already.
        for &n in nums.iter().filter(|&&n| n < head.seg) {
            let _ = std::fs::remove_file(seg_path(&cfg.dir, n));
        }
        nums.retain(|&n| n >= head.seg);
        if nums.first() != Some(&head.seg) {
            // The cursor's segment is gone (all answered): start at the next one there is.
            head = Pos {
                seg: nums.first().copied().unwrap_or(head.seg),
                off: 0,
            };
        }
        let mut segments = VecDeque::new();
        let mut records = 0u64;
        let mut truncated = 0u64;
        for &n in &nums {
            let path = seg_path(&cfg.dir, n);
            let from = if n == head.seg { head.off } else { 0 };
            let (len, count, cut) = check_segment(&path, from)?;
            records += count;
            truncated += cut;
            segments.push_back((n, len));
        }
        if let Some(&(n, len)) = segments.front() {
            if n == head.seg && head.off > len {
                head.off = len;
            }
        }
        if segments.is_empty() {
            let n = head.seg;
            File::create(seg_path(&cfg.dir, n))?;
            segments.push_back((n, 0));
            head = Pos { seg: n, off: 0 };
        }
        let (last, _) = *segments.back().unwrap_or(&(head.seg, 0));
        let writer = OpenOptions::new()
            .append(true)
            .open(seg_path(&cfg.dir, last))?;
        let bytes = segments.iter().map(|s| s.1).sum::<u64>() - head.off;
        if truncated > 0 {
            tracing::warn!(dir = %cfg.dir.display(), records = truncated, "spool: cut a torn or corrupt tail");
        }
        Ok(Spool {
            cfg,
            segments,
            writer,
            head,
            records,
            bytes,
            dirty: false,
            last_sync: Instant::now(),
            reader: None,
            truncated,
        })
    }

    /// Records not yet answered.
    pub fn len(&self) -> u64 {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes not yet answered (with record headers).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends records in order; refuses those that would pass `max_bytes`.
    pub fn append<B: AsRef<[u8]>>(&mut self, bodies: &[B]) -> std::io::Result<Appended> {
        let mut out = Appended::default();
        let mut buf: Vec<u8> = Vec::new();
        for b in bodies {
            let b = b.as_ref();
            let size = HEADER + b.len() as u64;
            if self.bytes + buf.len() as u64 + size > self.cfg.max_bytes {
                out.refused += 1;
                continue;
            }
            let cur = self.segments.back().map(|s| s.1).unwrap_or(0);
            if cur + buf.len() as u64 > 0 && cur + buf.len() as u64 + size > self.cfg.segment_bytes
            {
                self.write_buf(&mut buf)?;
                self.roll()?;
            }
            buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(b).to_le_bytes());
            buf.extend_from_slice(b);
            out.written += 1;
        }
        self.write_buf(&mut buf)?;
        self.records += out.written;
        match self.cfg.fsync {
            Fsync::Always => self.sync()?,
            Fsync::Interval(d) if self.last_sync.elapsed() >= d => self.sync()?,
            _ => {}
        }
        Ok(out)
    }

    fn write_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.writer.write_all(buf)?;
        if let Some(last) = self.segments.back_mut() {
            last.1 += buf.len() as u64;
        }
        self.bytes += buf.len() as u64;
        self.dirty = true;
        buf.clear();
        Ok(())
    }

    fn roll(&mut self) -> std::io::Result<()> {
        if self.dirty && self.cfg.fsync != Fsync::Never {
            self.writer.sync_data()?;
        }
        let n = self.segments.back().map(|s| s.0 + 1).unwrap_or(0);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(seg_path(&self.cfg.dir, n))?;
        self.writer = f;
        self.segments.push_back((n, 0));
        self.dirty = false;
        Ok(())
    }

    /// Syncs the segment being written, if anything was written since the last sync.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty && self.cfg.fsync != Fsync::Never {
            self.writer.sync_data()?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Syncs when the interval policy says it is time (called by the sender now and then).
    pub fn sync_if_due(&mut self) -> std::io::Result<()> {
        if let Fsync::Interval(d) = self.cfg.fsync {
            if self.dirty && self.last_sync.elapsed() >= d {
                return self.sync();
            }
        }
        Ok(())
    }

    /// Reads up to `max_n` records (and about `max_bytes`, at least one) from the head,
    /// without removing them. Returns the bodies and the position after the last one.
    pub fn peek(&mut self, max_n: usize, max_bytes: usize) -> std::io::Result<(Vec<Vec<u8>>, Pos)> {
        let mut out = Vec::new();
        let mut pos = self.head;
        let mut total = 0usize;
        while out.len() < max_n && (total < max_bytes || out.is_empty()) {
            let Some(idx) = self.segments.iter().position(|s| s.0 == pos.seg) else {
                break;
            };
            let len = self.segments[idx].1;
            if pos.off >= len {
                if idx + 1 < self.segments.len() {
                    pos = Pos {
                        seg: self.segments[idx + 1].0,
                        off: 0,
                    };
                    continue;
                }
                break;
            }
            // Read a chunk and take the whole records in it.
            let want = ((len - pos.off) as usize).min(max_bytes.saturating_sub(total) + 65_536);
            let chunk = self.read_at(pos, want)?;
            let mut at = 0usize;
            let mut took = false;
            while out.len() < max_n && (total < max_bytes || out.is_empty()) {
                if at + HEADER as usize > chunk.len() {
                    break;
                }
                let n = u32::from_le_bytes(chunk[at..at + 4].try_into().unwrap_or([0; 4])) as usize;
                let crc = u32::from_le_bytes(chunk[at + 4..at + 8].try_into().unwrap_or([0; 4]));
                let body = if at + 8 + n <= chunk.len() {
                    chunk[at + 8..at + 8 + n].to_vec()
                } else if !took {
                    // A record larger than the chunk: read it alone.
                    self.read_at(
                        Pos {
                            seg: pos.seg,
                            off: pos.off + 8,
                        },
                        n,
                    )?
                } else {
                    break;
                };
                if body.len() != n || crc32fast::hash(&body) != crc {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("spool record at {}:{} is corrupt", pos.seg, pos.off),
                    ));
                }
                at += 8 + n;
                total += n;
                pos.off += 8 + n as u64;
                out.push(body);
                took = true;
                if at >= chunk.len() {
                    break;
                }
            }
            if !took {
                break;
            }
        }
        Ok((out, pos))
    }

    fn read_at(&mut self, pos: Pos, n: usize) -> std::io::Result<Vec<u8>> {
        if self.reader.as_ref().map(|r| r.0) != Some(pos.seg) {
            self.reader = Some((pos.seg, File::open(seg_path(&self.cfg.dir, pos.seg))?));
        }
        let Some((_, f)) = self.reader.as_mut() else {
            return Ok(Vec::new());
        };
        f.seek(SeekFrom::Start(pos.off))?;
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            let k = f.read(&mut buf[got..])?;
            if k == 0 {
                break;
            }
            got += k;
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// Marks every record before `pos` (`count` of them) as answered: moves the cursor and
    /// deletes segments left entirely behind it.
    pub fn ack(&mut self, pos: Pos, count: u64) -> std::io::Result<()> {
        if pos <= self.head {
            return Ok(());
        }
        self.head = pos;
        self.records = self.records.saturating_sub(count);
        // Skip to the next segment when this one is done and another follows.
        while let Some(idx) = self.segments.iter().position(|s| s.0 == self.head.seg) {
            if self.head.off >= self.segments[idx].1 && idx + 1 < self.segments.len() {
                self.head = Pos {
                    seg: self.segments[idx + 1].0,
                    off: 0,
                };
            } else {
                break;
            }
        }
        while let Some(&(n, _)) = self.segments.front() {
            if n >= self.head.seg {
                break;
            }
            self.segments.pop_front();
            if self.reader.as_ref().map(|r| r.0) == Some(n) {
                self.reader = None;
            }
            let _ = std::fs::remove_file(seg_path(&self.cfg.dir, n));
        }
        // A large, fully answered last segment is replaced by a fresh one.
        if self.records == 0 {
            if let Some(&(n, len)) = self.segments.back() {
                if self.segments.len() == 1
                    && len >= self.cfg.segment_bytes / 4
                    && self.head.off >= len
                {
                    self.roll()?;
                    self.head = Pos { seg: n + 1, off: 0 };
                    self.segments.pop_front();
                    self.reader = None;
                    let _ = std::fs::remove_file(seg_path(&self.cfg.dir, n));
                }
            }
        }
        self.bytes = self.segments.iter().map(|s| s.1).sum::<u64>() - self.head.off;
        let tmp = self.cfg.dir.join("cursor.tmp");
        std::fs::write(&tmp, format!("{} {}\n", self.head.seg, self.head.off))?;
        std::fs::rename(&tmp, self.cfg.dir.join("cursor"))?;
        Ok(())
    }
}

/// Checks the records of a segment from `from`; truncates it at the first bad one. Returns
/// (length after repair, good records, records cut).
fn check_segment(path: &Path, from: u64) -> std::io::Result<(u64, u64, u64)> {
    let data = std::fs::read(path)?;
    let mut at = from.min(data.len() as u64) as usize;
    let mut good = 0u64;
    loop {
        if at == data.len() {
            return Ok((data.len() as u64, good, 0));
        }
        let ok = at + 8 <= data.len() && {
            let n = u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or([0; 4]));
            let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap_or([0; 4]));
            n <= MAX_RECORD
                && at + 8 + n as usize <= data.len()
                && crc32fast::hash(&data[at + 8..at + 8 + n as usize]) == crc
                && {
                    at += 8 + n as usize;
                    true
                }
        };
        if ok {
            good += 1;
        } else {
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(at as u64)?;
            f.sync_all()?;
            return Ok((at as u64, good, 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            segment_bytes: 200,
            fsync: Fsync::Never,
            ..SpoolConfig::new(dir)
        }
    }

    fn body(i: usize) -> Vec<u8> {
        format!("{{\"id\":\"e{i}\"}}").into_bytes()
    }

    #[test]
    fn keeps_order_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(dir.path())).unwrap();
        let bodies: Vec<Vec<u8>> = (0..50).map(body).collect();
        assert_eq!(s.append(&bodies).unwrap().written, 50);
        assert!(s.segments.len() > 3, "rolled into several segments");
        let (got, pos) = s.peek(20, 1 << 20).unwrap();
        assert_eq!(got, bodies[..20]);
        s.ack(pos, 20).unwrap();
        drop(s);
        let mut s = Spool::open(cfg(dir.path())).unwrap();
        assert_eq!(s.len(), 30);
        let (got, pos) = s.peek(100, 1 << 20).unwrap();
        assert_eq!(got, bodies[20..]);
        s.ack(pos, 30).unwrap();
        assert!(s.is_empty());
        drop(s);
        let s = Spool::open(cfg(dir.path())).unwrap();
        assert!(s.is_empty());
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 3, "answered segments are deleted ({files} files)");
    }

    #[test]
    fn torn_last_record_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(SpoolConfig {
            segment_bytes: 1 << 20,
            ..cfg(dir.path())
        })
        .unwrap();
        s.append(&[body(1), body(2), body(3)]).unwrap();
        let (n, _) = *s.segments.back().unwrap();
        drop(s);
        // A crash in the middle of writing the fourth record.
        let path = seg_path(dir.path(), n);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[20, 0, 0, 0, 1, 2, 3, 4, b'{', b'"']).unwrap();
        drop(f);
        let mut s = Spool::open(SpoolConfig {
            segment_bytes: 1 << 20,
            ..cfg(dir.path())
        })
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.truncated, 1);
        s.append(&[body(4)]).unwrap();
        let (got, _) = s.peek(10, 1 << 20).unwrap();
        assert_eq!(got, vec![body(1), body(2), body(3), body(4)]);
    }

    #[test]
    fn full_spool_refuses_new_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(SpoolConfig {
            max_bytes: 100,
            ..cfg(dir.path())
        })
        .unwrap();
        let r = s.append(&(0..10).map(body).collect::<Vec<_>>()).unwrap();
        assert_eq!(r.written + r.refused, 10);
        assert!(r.refused > 0 && r.written > 0);
        let (got, _) = s.peek(100, 1 << 20).unwrap();
        assert_eq!(got.len() as u64, r.written);
        assert_eq!(got[0], body(0), "the oldest keep their place");
    }
}
