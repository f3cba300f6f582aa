//! Event segments: where the canonical JSON of every stored event lives, durably and for
//! good. They exist so that an event is written once: the writer appends its record and
//! `fdatasync`s (the durability point of an acknowledgement), and SQLite keeps only the
//! indexed attributes and the record's location (`loc`, `len`). Before segments the body was
//! written three times (log, SQLite's WAL, the checkpoint into the database file), and it
//! dominated the index's commits.
//!
//! Layout: `DATA_DIR/segments/NNNNNNNN.seg`, numbered from 1. Each file is a 16-byte header
//! (`HSEG0001`, then the segment number as a u64 LE) and records
//! `len: u32 LE | crc32(body): u32 LE | body`. A record whose length is zero, whose CRC does
//! not check out, or that runs past the end of the file, with no intact record after it, ends
//! the segment: it is taken for the torn last write of a crashed process (never acknowledged:
//! its `fdatasync` did not return), and opening the writer cuts it off (appends still never
//! start before the end of the newest record the index holds). A damaged record with
//! intact ones after it is skipped, and those are kept: the disk changed an acknowledged
//! record, or a crash cut a write whose later pages reached the disk before its earlier ones
//! (then keeping them is at-least-once delivery; a retry is a duplicate). Cutting there would
//! lose every acknowledged record after it that the index does not hold yet. Reads check each
//! body's length and CRC, so that a damaged body is an error, never served. A segment is
//! closed when it passes its size limit; only the last one is ever written.
//!
//! A location is `segment number << 40 | offset of the body in the file`: immutable, so a
//! read needs no lock beyond the table of open files.
//!
//! Segments are written over zeros that are already on disk: a helper thread prepares the
//! next segment ahead of time (`spare.<pid>.<n>.tmp`, zero-filled and fsynced, then renamed
//! to `spare.<pid>.<n>.ready`) and the writer renames it into place when the current one is
//! full. A ready spare outlives a restart; a `.tmp` one may be incomplete and is prepared
//! again. Each preparation has its own names and the writer takes only the one its own helper
//! reported (or, at open, one an earlier run left), so a helper of an earlier writer in the
//! same process, still running, can never swap a file under it. An `fdatasync` of records
//! written over existing blocks flushes data only; one that grows the file also commits the
//! file system's journal, which waits for every other file's pending writes (SQLite's) and
//! took 0.3–1 ms more per acknowledgement here. The zeros are written with direct I/O where
//! the file system has it (a buffered fill cost 2–4 µs of CPU per ingested event here, see
//! [`zero_file`]), so the page cache does not hold those pages, and each write of the
//! writer covers whole pages (its first page's earlier bytes, kept in memory, and the zeros
//! after its records; see [`SegmentWriter::sync`]): a write into part of an uncached page
//! would read it from disk first. When no spare is ready the writer keeps appending to the
//! current segment, past its prepared size. At open, everything after the last intact record
//! is zeroed, so that no torn bytes follow the next records. (Intact records of a group whose
//! write failed may remain after newer ones; their seqs were never handed out again, and the
//! replay into the index passes over seqs it already holds.)

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use crate::throttle::LogThrottle;

const MAGIC: &[u8; 8] = b"HSEG0001";
const HEADER: u64 = 16;
const OFFSET_BITS: u32 = 40;
/// The size of a new store's first segment.
const FIRST_SEGMENT: u64 = 4 << 20;
/// The unit of the writer's writes and of direct I/O: a memory page (4 KiB on the machines
/// Herald runs on; with larger pages a write may read a page first, which costs time, not
/// correctness).
const PAGE: u64 = 4096;

/// Where the kernel cannot say whether a read would wait for the disk ([`read_cached`]): a
/// body read that takes this long came from the disk, not the page cache (a hit takes a
/// microsecond or two here).
const SLOW_READ: std::time::Duration = std::time::Duration::from_micros(20);
/// How far before a body read from disk [`read_around`] asks for, and how far after it: about
/// 1,300 events of 800 bytes before it. Read body by body, the newest 20,000 events took
/// 1.5 ms per 100 the first time without it, 0.55 with it (as many as from the page cache).
/// It does little for a listing of a rare type, whose events are further apart than that:
/// listings ask for the exact records they will read instead ([`SegmentReader::will_need`]).
const READ_BEHIND: u64 = 1 << 20;
const READ_AHEAD: u64 = 64 << 10;

/// Asks the kernel to read the pages around `at` into the page cache, without waiting
/// (`POSIX_FADV_WILLNEED`), after a body read found its page on disk only: with segments
/// written past the page cache ([`SegmentWriter::set_direct`]), the newest events' pages are
/// on disk only, and reads go newest first, backwards through the file, where the kernel's
/// own read-ahead (forwards) does not help. One read from disk then brings in the pages of
/// the next thousand or so bodies a scan will read, in one request.
fn read_around(file: &File, at: u64) {
    let from = at.saturating_sub(READ_BEHIND);
    advise_will_need(file, from, at - from + READ_AHEAD);
}

/// Reads into `buf` from `at` what the page cache holds, without waiting for the disk
/// (`preadv2` with `RWF_NOWAIT`): how many bytes it got, from the start (fewer than
/// `buf.len()`: the rest would have to come from the disk, or the file ends). `None` where
/// the kernel or the file system does not answer that way (then the caller reads and
/// times the read, [`SLOW_READ`]). This tells a read from disk from one from memory
/// whatever the disk's speed, and before waiting, so that [`read_around`] and
/// [`SegmentReader::will_need`] start the disk on the rest while this read waits.
fn read_cached(file: &File, buf: &mut [u8], at: u64) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec over `buf`, which outlives the call; the kernel writes at most
        // `buf.len()` bytes into it.
        let n = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                &iov,
                1,
                at as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        if n >= 0 {
            return Some(n as usize);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => Some(0),
            _ => None,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, buf, at);
        None
    }
}

/// `POSIX_FADV_WILLNEED` for `len` bytes of `file` from `from`: the kernel starts reading
/// them into the page cache and returns.
fn advise_will_need(file: &File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on an open descriptor; it reads no memory of ours.
    // Advice only: a failure changes nothing but speed.
    let _ = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            from as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        )
    };
}

/// Records at most this far apart are asked for as one range by
/// [`SegmentReader::will_need`]: reading the bytes between costs the disk less than another
/// request.
const WILL_NEED_GAP: u64 = 8 << 10;

/// The location of a body: segment number and offset.
pub fn loc(segment: u32, offset: u64) -> i64 {
    ((segment as i64) << OFFSET_BITS) | offset as i64
}

pub(crate) fn split(loc: i64) -> (u32, u64) {
    (
        (loc >> OFFSET_BITS) as u32,
        (loc as u64) & ((1u64 << OFFSET_BITS) - 1),
    )
}

pub(crate) fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

/// The segment numbers present in `dir`, ascending.
fn list(dir: &Path) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u32>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads the records of one segment from `from` (an offset of a record, or 0 for the
/// first) up to `end` (the file's size when unknown), calling `f(location of the body, body)`
/// for each intact one. Returns where the intact records end, and whether only zeros follow
/// them (up to `end`): the clean end of a segment written over zeros, found in one pass.
///
/// A damaged record followed by an intact one is skipped: the scan logs it and goes on from
/// the next intact record, so that the records after it are neither lost nor cut off. Before
/// `acked_below` (the end of a record known to be acknowledged: the newest the index holds)
/// it is the disk's doing. Past it, it may be too, or a crash cut a write whose later records
/// reached the disk before its earlier ones: those records were never acknowledged, and
/// keeping them is at-least-once delivery (a retry with the same source and id is then a
/// duplicate). A damaged record with no intact one after it ends the segment: the torn last
/// write of a crashed process. `report`: log the skipped records (a scan of a range that an
/// earlier scan reported does not say it again).
fn scan_file(
    file: &File,
    n: u32,
    from: u64,
    end: u64,
    acked_below: u64,
    report: bool,
    f: &mut dyn FnMut(i64, &str) -> io::Result<()>,
) -> io::Result<(u64, bool)> {
    let size = file.metadata()?.len().min(end);
    let mut head = [0u8; HEADER as usize];
    if size < HEADER {
        return Ok((0, false));
    }
    file.read_exact_at(&mut head, 0)?;
    if &head[..8] != MAGIC
        || u64::from_le_bytes(head[8..].try_into().unwrap_or_default()) != n as u64
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("segment {n} has a wrong header"),
        ));
    }
    let mut pos = from.max(HEADER);
    // Read in large chunks: segments are scanned whole at start-up.
    let mut chunk = Vec::new();
    let mut chunk_at = pos;
    let mut body = Vec::new();
    loop {
        // The CRC of a record whose header and body were read whole.
        let read = (|| -> io::Result<Option<u32>> {
            let mut rec = [0u8; 8];
            if pos + 8 > size || !read_buffered(file, &mut chunk, &mut chunk_at, pos, &mut rec)? {
                return Ok(None);
            }
            let (len, crc) = header(&rec);
            if len == 0 || pos + 8 + len > size {
                return Ok(None);
            }
            body.resize(len as usize, 0);
            let whole = read_buffered(file, &mut chunk, &mut chunk_at, pos + 8, &mut body)?;
            Ok(whole.then_some(crc))
        })()?;
        let Some(text) = read.and_then(|crc| intact(crc, &body)) else {
            // Where the writer stopped, the zeros it writes over: no record can follow.
            if all_zero(file, pos, size)? {
                return Ok((pos, true));
            }
            let Some(next) = next_intact(file, pos + 1, size, size)? else {
                break;
            };
            if report {
                report_damage(n, pos, next - pos, pos < acked_below);
            }
            pos = next;
            continue;
        };
        f(loc(n, pos + 8), text)?;
        pos += 8 + body.len() as u64;
    }
    Ok((pos, false))
}

/// Logs a damaged record that a scan skipped: an error among acknowledged records (the disk
/// changed one), else a warning (that, or a crash cut a write).
fn report_damage(segment: u32, offset: u64, skipped_bytes: u64, acknowledged: bool) {
    #[cfg(test)]
    DAMAGE_REPORTS.with(|c| c.set(c.get() + 1));
    if acknowledged {
        tracing::error!(
            segment,
            offset,
            skipped_bytes,
            "an event segment holds a damaged record among acknowledged ones (the disk changed it); skipped it and kept the records after it"
        );
    } else {
        tracing::warn!(
            segment,
            offset,
            skipped_bytes,
            "an event segment holds a damaged record followed by intact ones (the disk changed it, or a crash cut a write whose later records reached the disk); skipped it and kept the records after it"
        );
    }
}

/// Whether every byte of `file` from `from` to `to` is zero; stops at the first that is not.
fn all_zero(file: &File, from: u64, to: u64) -> io::Result<bool> {
    const WINDOW: usize = 1 << 20;
    let mut window = vec![0u8; WINDOW];
    let mut at = from;
    // A first small read: a damaged record is usually not zero right away.
    let mut size = 4096;
    while at < to {
        let n = (to - at).min(size as u64) as usize;
        size = WINDOW;
        file.read_exact_at(&mut window[..n], at)?;
        if !is_zero(&window[..n]) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Whether `buf` holds only zeros. Slice comparisons are `memcmp`s: a byte loop that stops at
/// the first non-zero byte does not vectorise, and took a fifth of a start-up's CPU.
fn is_zero(buf: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    buf.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// A record's body as text when it matches the CRC of its header and is UTF-8: the test of a
/// record's integrity at start-up, in the scan and in its search for the next intact record
/// ([`SegmentReader::read`] makes the same test on a buffer it keeps as the text).
fn intact(crc: u32, body: &[u8]) -> Option<&str> {
    if crc32fast::hash(body) != crc {
        return None;
    }
    std::str::from_utf8(body).ok()
}

/// A record header: the body's length and CRC.
fn header(rec: &[u8; 8]) -> (u64, u32) {
    let len = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
    let crc = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
    (len as u64, crc)
}

/// The offset of the first intact record that starts in `from..=last`: a record header whose
/// length fits the file and whose CRC matches a UTF-8 body that starts like every stored
/// event (`{"seq":`). Only called on a damaged segment; it searches in 4 MiB windows.
fn next_intact(file: &File, from: u64, last: u64, size: u64) -> io::Result<Option<u64>> {
    const START: &[u8] = b"{\"seq\":";
    const WINDOW: u64 = 4 << 20;
    let finder = memchr::memmem::Finder::new(START);
    let mut window = Vec::new();
    let mut body = Vec::new();
    // `{"seq":` sits 8 bytes after the start of its record.
    let mut at = from + 8;
    let stop = (last + 8 + START.len() as u64).min(size);
    while at < stop {
        let n = (stop - at).min(WINDOW);
        window.resize(n as usize, 0);
        file.read_exact_at(&mut window, at)?;
        for i in finder.find_iter(&window) {
            let head = at + i as u64 - 8;
            if head > last {
                return Ok(None);
            }
            let mut rec = [0u8; 8];
            file.read_exact_at(&mut rec, head)?;
            let (len, crc) = header(&rec);
            if len == 0 || head + 8 + len > size {
                continue;
            }
            body.resize(len as usize, 0);
            file.read_exact_at(&mut body, head + 8)?;
            if intact(crc, &body).is_some() {
                return Ok(Some(head));
            }
        }
        // Overlap the windows so that a start cut by the boundary is found in the next.
        at += n.saturating_sub(START.len() as u64 - 1).max(1);
    }
    Ok(None)
}

/// Fills `out` from `at`, through a 4 MiB read-ahead buffer. False past the end of file.
fn read_buffered(
    file: &File,
    chunk: &mut Vec<u8>,
    chunk_at: &mut u64,
    at: u64,
    out: &mut [u8],
) -> io::Result<bool> {
    let end = at + out.len() as u64;
    if at < *chunk_at || end > *chunk_at + chunk.len() as u64 {
        let want = (out.len()).max(4 << 20);
        chunk.resize(want, 0);
        let mut got = 0;
        while got < want {
            match file.read_at(&mut chunk[got..], at + got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        chunk.truncate(got);
        *chunk_at = at;
        if got < out.len() {
            return Ok(false);
        }
    }
    let s = (at - *chunk_at) as usize;
    out.copy_from_slice(&chunk[s..s + out.len()]);
    Ok(true)
}

#[cfg(test)]
thread_local! {
    /// How many damaged records the scans of this thread logged.
    static DAMAGE_REPORTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Calls `f(location, body)` for every record stored after the body at `after` (whose length
/// is the second member), or for every record when `after` is `None`, in order, up to `end`
/// (the location where the writer appends next, [`SegmentWriter::end`]; `None` reads every
/// segment to the end of its file).
///
/// Called after [`SegmentWriter::open`], which scanned the newest segment over the same
/// range (from the end of `after`, or from its start) and logged its damaged records: this
/// logs those of the older segments only.
pub fn replay(
    dir: &Path,
    after: Option<(i64, u64)>,
    end: Option<i64>,
    f: &mut dyn FnMut(i64, &str) -> io::Result<()>,
) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let (first, from) = match after {
        Some((l, len)) => {
            let (n, off) = split(l);
            (n, off + len)
        }
        None => (0, 0),
    };
    let end = end.map(split);
    let numbers = list(dir)?;
    let newest = numbers.last().copied();
    for n in numbers {
        if n < first {
            continue;
        }
        // Every record of a closed segment was acknowledged; of the newest, those up to what
        // the index holds.
        let acked_below = match (Some(n) == newest, n == first) {
            (false, _) => u64::MAX,
            (true, true) => from,
            (true, false) => 0,
        };
        let stop = match end {
            Some((e, off)) if e == n => off,
            _ => u64::MAX,
        };
        let file = File::open(segment_path(dir, n))?;
        scan_file(
            &file,
            n,
            if n == first { from } else { 0 },
            stop,
            acked_below,
            Some(n) != newest,
            f,
        )?;
    }
    Ok(())
}

/// The writer's end: appends to the last segment, moves to a new one past the size limit.
pub struct SegmentWriter {
    dir: PathBuf,
    file: File,
    number: u32,
    /// Where the next record goes.
    pos: u64,
    /// The zero-filled size of the file: writes below it do not grow it.
    prepared: u64,
    /// What the next write puts at `base`: the bytes of the file from `base` (the start of
    /// the page `pos` is in) to `pos`, then the records buffered since the last sync.
    /// Writes start and end on page boundaries (see [`SegmentWriter::sync`]).
    buf: Vec<u8>,
    base: u64,
    /// The current segment opened for direct I/O (`O_DIRECT`), through which
    /// [`SegmentWriter::sync`] writes when it is set (see [`SegmentWriter::set_direct`]).
    direct: Option<File>,
    /// Whether writes go through `direct` where the file system has direct I/O.
    want_direct: bool,
    /// `buf` copied to a page-aligned address for a direct write (reused: grown, never shrunk).
    aligned: AlignedBuf,
    max_bytes: u64,
    spare: Spare,
    /// The size the next spare is prepared with: segments start small and double up to
    /// `max_bytes`, so that a small store does not hold hundreds of MiB of zeros.
    next_size: u64,
}

/// The spare segment, shared with the thread that prepares it.
#[derive(Clone, Default)]
struct Spare(Arc<std::sync::Mutex<SpareState>>);

#[derive(Default)]
enum SpareState {
    #[default]
    None,
    /// A helper is writing a `.tmp` file.
    Preparing,
    /// This `.ready` file is whole and fsynced.
    Ready(PathBuf),
}

impl Spare {
    fn state(&self) -> std::sync::MutexGuard<'_, SpareState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts preparing a spare segment of `bytes` in the background, unless one is being
    /// prepared or ready.
    fn prepare(&self, dir: &Path, bytes: u64) {
        {
            let mut state = self.state();
            if !matches!(*state, SpareState::None) {
                return;
            }
            *state = SpareState::Preparing;
        }
        let spare = self.clone();
        let dir = dir.to_owned();
        let spawned = std::thread::Builder::new()
            .name("herald-segment".into())
            .spawn(move || {
                crate::sqlite::lower_priority();
                match prepare_spare(&dir, bytes) {
                    Ok(path) => spare.set_ready(path),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot prepare the next event segment; the writer appends to the current one");
                        // Try again at the next roll.
                        spare.clear();
                    }
                }
            });
        if spawned.is_err() {
            self.clear();
        }
    }

    fn set_ready(&self, path: PathBuf) {
        *self.state() = SpareState::Ready(path);
    }

    /// The ready spare's file.
    fn path(&self) -> Option<PathBuf> {
        match &*self.state() {
            SpareState::Ready(path) => Some(path.clone()),
            _ => None,
        }
    }

    /// Forgets the spare (taken, or failed): the next [`Spare::prepare`] makes another.
    fn clear(&self) {
        *self.state() = SpareState::None;
    }
}

/// Whether `name` is a ready spare (`spare.<pid>.<n>.ready`).
fn is_spare_ready(name: &str) -> bool {
    name.starts_with("spare.") && name.ends_with(".ready")
}

/// Whether `name` is a spare being prepared (`spare.<pid>.<n>.tmp`, or `spare.tmp` of
/// earlier versions).
fn is_spare_tmp(name: &str) -> bool {
    name.starts_with("spare.") && name.ends_with(".tmp")
}

/// Prepares a spare segment: `bytes` of zeros written into a file of its own
/// (`spare.<pid>.<n>.tmp`), fsynced, then renamed to `spare.<pid>.<n>.ready` (a ready spare
/// is always whole), which it returns. The file is removed if this fails.
fn prepare_spare(dir: &Path, bytes: u64) -> io::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("spare.{}.{n}", std::process::id());
    let tmp = dir.join(format!("{name}.tmp"));
    let ready = dir.join(format!("{name}.ready"));
    match zero_file(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &ready)) {
        Ok(()) => Ok(ready),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes `bytes` of zeros into a new file at `path` and fsyncs it.
///
/// Through direct I/O where the file system has it (`O_DIRECT`: from a buffer straight to
/// the disk, past the page cache): a buffered fill copied every zero into the page cache
/// and wrote it back from there, about 2.4 ns of CPU per byte here (0.5–0.6 s per 256 MiB
/// segment, a byte of zeros for each byte of events), against 0.02 s direct. What direct
/// I/O does not take (a file system without it, such as tmpfs, or a size that is not a
/// multiple of [`PAGE`]) is written buffered.
fn zero_file(path: &Path, bytes: u64) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    // One buffer of zeros for both ways of writing them.
    with_aligned_zeros(|zeros| {
        let mut at = zero_direct(path, bytes, zeros)?;
        while at < bytes {
            let n = (bytes - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.sync_all()
    })
}

/// Calls `f` with 1 MiB of zeros aligned as direct I/O needs (to the device's blocks): a
/// page-aligned slice of a larger buffer.
fn with_aligned_zeros<T>(f: impl FnOnce(&[u8]) -> T) -> T {
    const CHUNK: usize = 1 << 20;
    let backing = vec![0u8; CHUNK + PAGE as usize];
    let skip = backing.as_ptr().align_offset(PAGE as usize);
    f(&backing[skip..skip + CHUNK])
}

/// Writes `zeros` (page-aligned, a whole number of pages long) over the first `bytes` of
/// the file at `path` with direct I/O, as far as it takes them (whole pages from the start);
/// returns how far that is. A file system that refuses direct I/O (`EINVAL`) is not an
/// error: the caller writes the rest buffered.
fn zero_direct(path: &Path, bytes: u64, zeros: &[u8]) -> io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(0),
        Err(e) => return Err(e),
    };
    let whole = bytes - bytes % PAGE;
    let mut at = 0;
    while at < whole {
        let n = (whole - at).min(zeros.len() as u64) as usize;
        match file.write_at(&zeros[..n], at) {
            // A short write leaves `at` on a page boundary only if it wrote whole pages.
            Ok(done) if done > 0 && done as u64 % PAGE == 0 => at += done as u64,
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// Zeroes the non-zero bytes of `file` from `from` to its end (a torn write, or records of a
/// batch that was never acknowledged), so that nothing stale follows the last record.
fn zero_tail(file: &File, from: u64) -> io::Result<bool> {
    let size = file.metadata()?.len();
    let mut chunk = vec![0u8; 1 << 20];
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    let mut changed = false;
    while at < size {
        let n = (size - at).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..n], at)?;
        if !is_zero(&chunk[..n]) {
            file.write_all_at(&zeros[..n], at)?;
            changed = true;
        }
        at += n as u64;
    }
    if changed {
        file.sync_data()?;
    }
    Ok(changed)
}

impl SegmentWriter {
    /// Opens the last segment of `dir` (creating the directory and segment 1 if needed) and
    /// cuts a torn tail off it: whatever follows the last intact record (see [`scan_file`]).
    /// `acknowledged` is the location and length of a record known to be acknowledged (the
    /// newest the index holds): appends never start before its end, even when it is damaged.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        acknowledged: Option<(i64, u64)>,
    ) -> io::Result<SegmentWriter> {
        std::fs::create_dir_all(dir)?;
        // A spare being prepared by an earlier run may be incomplete: prepare it again. Of the
        // ready ones (whole and fsynced before they were renamed) the largest is kept.
        let mut spares: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if is_spare_tmp(&name) {
                let _ = std::fs::remove_file(entry.path());
            } else if is_spare_ready(&name) {
                spares.push((entry.metadata()?.len(), entry.path()));
            }
        }
        spares.sort();
        let ready = spares.pop();
        for (_, extra) in spares {
            let _ = std::fs::remove_file(extra);
        }
        let spare = Spare::default();
        let numbers = list(dir)?;
        let new = |file: File, number: u32, prepared: u64| SegmentWriter {
            dir: dir.to_owned(),
            file,
            number,
            pos: HEADER,
            prepared,
            buf: Vec::with_capacity(1 << 20),
            base: 0,
            direct: None,
            want_direct: false,
            aligned: AlignedBuf::default(),
            max_bytes,
            spare: spare.clone(),
            next_size: max_bytes,
        };
        // A small segment prepared now: the first of a new store, one again whose header did
        // not survive, or the next after one cut below its header; the next (twice as large)
        // is prepared in the background.
        let fresh = |number: u32| -> io::Result<SegmentWriter> {
            let first = max_bytes.min(FIRST_SEGMENT);
            let path = prepare_spare(dir, first)?;
            let (file, number) = take_spare(dir, number, &path)?;
            Ok(new(file, number, first))
        };
        // The segment of the newest record the index holds: no segment up to it is ever
        // started again, even when its file is gone.
        let indexed_segment = acknowledged.map(|(l, _)| split(l).0);
        let mut w = match (numbers.last(), indexed_segment) {
            (last, Some(indexed)) if last.is_none_or(|&l| l < indexed) => {
                tracing::error!(
                    segment = indexed,
                    "the event segment that holds the newest indexed events is gone; appending to a new segment after it"
                );
                fresh(indexed + 1)?
            }
            (None, _) => fresh(1)?,
            (Some(&last), _) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(segment_path(dir, last))?;
                let keep_below = match acknowledged.map(|(l, len)| (split(l), len)) {
                    Some(((n, off), len)) if n == last => off + len,
                    _ => 0,
                };
                // The scan starts after the newest record the index holds: nothing before it
                // is ever cut, and appends never take the place of one the index points at,
                // even when it is damaged (reads find that out).
                let (end, zeros_after) = scan_file(
                    &file,
                    last,
                    keep_below,
                    u64::MAX,
                    keep_below,
                    true,
                    &mut |_, _| Ok(()),
                )?;
                let size = file.metadata()?.len();
                if end < HEADER {
                    drop(file);
                    if keep_below > 0 {
                        // Cut below its header while the index holds records of it: a new
                        // segment takes the next number, so that no record takes the location
                        // of one the index points at (reads of those find them damaged).
                        tracing::error!(
                            segment = last,
                            "the last event segment lost its header and the records the index holds in it; appending to a new segment"
                        );
                        fresh(last + 1)?
                    } else {
                        fresh(last)?
                    }
                } else {
                    if !zeros_after && zero_tail(&file, end)? {
                        tracing::warn!(
                            segment = last,
                            kept = end,
                            "the last event segment ended with a torn record (an unacknowledged write cut by a crash); it was zeroed"
                        );
                    }
                    let mut w = new(file, last, size);
                    w.pos = end;
                    w
                }
            }
        };
        w.prepared = w.prepared.max(w.pos);
        w.load_tail()?;
        if let Some((len, path)) = ready {
            if len > HEADER {
                w.spare.set_ready(path);
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
        w.next_size = (w.prepared.max(FIRST_SEGMENT) * 2).min(max_bytes);
        w.spare.prepare(dir, w.next_size);
        Ok(w)
    }

    /// The location where the next record goes: the end of the intact records.
    pub fn end(&self) -> i64 {
        loc(self.number, self.pos)
    }

    /// Reads the bytes of the page `pos` is in, up to `pos`, into `buf` (with nothing
    /// buffered): the start of the next write.
    fn load_tail(&mut self) -> io::Result<()> {
        self.base = self.pos - self.pos % PAGE;
        self.buf.clear();
        self.buf.resize((self.pos - self.base) as usize, 0);
        self.file.read_exact_at(&mut self.buf, self.base)
    }

    /// Whether records are buffered (pushed and not synced).
    fn buffered(&self) -> bool {
        self.base + self.buf.len() as u64 > self.pos
    }

    /// Buffers one record; returns the location its body will have.
    pub fn push(&mut self, body: &str) -> i64 {
        let at = self.base + self.buf.len() as u64 + 8;
        self.buf
            .extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&crc32fast::hash(body.as_bytes()).to_le_bytes());
        self.buf.extend_from_slice(body.as_bytes());
        loc(self.number, at)
    }

    /// Moves to the prepared next segment when the current one is full (its prepared part
    /// is used up, and it is past the size limit), and starts preparing the one after. Call it
    /// between groups (never with records buffered).
    pub fn roll_if_full(&mut self) -> io::Result<()> {
        if self.buffered() || self.pos < self.prepared.min(self.max_bytes) {
            return Ok(());
        }
        let Some(path) = self.spare.path() else {
            // Still being prepared (or failed: try again); append to this one meanwhile.
            self.spare.prepare(&self.dir, self.next_size);
            return Ok(());
        };
        let (file, number) = match take_spare(&self.dir, self.number + 1, &path) {
            Ok(f) => f,
            Err(e) => {
                // Prepare another spare for the next try; segment `number + 1`, if it was
                // renamed already, holds no record and is taken over by that try.
                self.spare.clear();
                return Err(e);
            }
        };
        self.prepared = file.metadata()?.len();
        self.file = file;
        self.number = number;
        self.direct = None;
        self.open_direct();
        self.pos = HEADER;
        self.base = 0;
        self.buf.clear();
        self.buf.extend_from_slice(&segment_header(number));
        self.spare.clear();
        self.next_size = (self.next_size * 2).min(self.max_bytes);
        self.spare.prepare(&self.dir, self.next_size);
        Ok(())
    }

    /// Writes the buffered records and, with `fsync`, waits until they are on disk (without
    /// it they survive a crash of the process but not of the machine).
    ///
    /// The write covers whole pages: it starts at the page the records start in, with that
    /// page's earlier bytes as they are in the file, and ends with the zeros that follow the
    /// records up to the next page boundary (within the prepared size). A write into part of
    /// a page the page cache does not hold makes the kernel read that page from disk first,
    /// and spares are zero-filled around the page cache ([`zero_file`]); rewriting the
    /// bytes of the page that precede the records changes nothing on disk (a partial write
    /// dirties the whole page anyway).
    ///
    /// On failure nothing of the batch counts: the write position stays where it was and the
    /// file is cut back to it (if even that fails, the next batch overwrites the same bytes).
    pub fn sync(&mut self, fsync: bool) -> io::Result<()> {
        let end = self.base + self.buf.len() as u64;
        let res = (|| {
            if end > self.pos {
                let padded = end.next_multiple_of(PAGE).min(self.prepared.max(end));
                self.buf.resize((padded - self.base) as usize, 0);
                self.write_buf(padded)?;
            }
            if fsync {
                self.file.sync_data()?;
            }
            Ok(())
        })();
        match res {
            Ok(()) => {
                self.pos = end;
                let keep = self.pos - self.pos % PAGE;
                self.buf.truncate((end - self.base) as usize);
                self.buf.drain(..(keep - self.base) as usize);
                self.base = keep;
                Ok(())
            }
            Err(e) => {
                self.discard_unsynced();
                let _ = self.file.set_len(self.pos);
                Err(e)
            }
        }
    }

    /// Writes through direct I/O instead of the page cache where the file system has it (a
    /// writer starts out writing through the page cache). A write into the page cache
    /// copies every byte of every event into pages the kernel allocates for it: 0.14 ns of
    /// CPU per byte on an idle machine here, but 1.8–2.5 ns when those pages are new to the
    /// virtual machine's host (a fresh page of guest memory is backed on first touch, and
    /// this one's balloon driver hands freed memory back to the host), which is what a
    /// store that grows by tens of MB a second mostly gets: 1.5–4 µs per event of the
    /// writer's CPU in the ingest bench. A direct write hands the pages to the disk as they
    /// are (0.06 ns per byte). What it costs instead: the page cache does not hold what was
    /// just written, so the first read of a new event's body (a query's result) reads its
    /// page from disk, with the pages before it ([`read_around`]). The fsync after it is the
    /// same `fdatasync` (the data and a flush of the disk's cache).
    pub fn set_direct(&mut self, on: bool) {
        self.want_direct = on;
        self.direct = None;
        self.open_direct();
    }

    /// Whether writes go through direct I/O now (asked for, and taken by the file system).
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Opens the current segment for direct I/O when that is wanted; a file system without
    /// it (tmpfs) leaves writes to the page cache.
    fn open_direct(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        if !self.want_direct {
            return;
        }
        let path = segment_path(&self.dir, self.number);
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        {
            Ok(f) => self.direct = Some(f),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(path = %path.display(), "the file system has no direct I/O; event segments are written through the page cache");
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot open the event segment for direct I/O; writing through the page cache");
            }
        }
    }

    /// Writes `buf` at `base` (`padded` is where it ends): directly when the segment is
    /// open for it and the write covers whole pages (it does within the prepared size),
    /// through the page cache otherwise. A direct write the kernel refuses as misaligned
    /// (a device whose blocks are larger than a page) is written again through the page
    /// cache, and later writes go there too.
    fn write_buf(&mut self, padded: u64) -> io::Result<()> {
        if let Some(direct) = &self.direct {
            if padded % PAGE == 0 {
                let aligned = self.aligned.copy_of(&self.buf);
                match direct.write_all_at(aligned, self.base) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        tracing::warn!(error = %e, "a direct write of an event segment was refused; writing through the page cache from now on");
                        self.direct = None;
                        self.want_direct = false;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.file.write_all_at(&self.buf, self.base)
    }

    /// Forgets buffered records that were not synced (their batch failed).
    pub fn discard_unsynced(&mut self) {
        self.buf.truncate((self.pos - self.base) as usize);
    }
}

/// A byte buffer whose contents start on a page boundary, as direct I/O needs them.
#[derive(Default)]
struct AlignedBuf {
    backing: Vec<u8>,
}

impl AlignedBuf {
    /// `bytes` copied to a page-aligned slice of the buffer (grown when it is too small).
    fn copy_of(&mut self, bytes: &[u8]) -> &[u8] {
        let skip = self.backing.as_ptr().align_offset(PAGE as usize);
        if self.backing.len() < skip + bytes.len() {
            self.backing = vec![0; bytes.len().next_multiple_of(1 << 20) + PAGE as usize];
        }
        let skip = self.backing.as_ptr().align_offset(PAGE as usize);
        let out = &mut self.backing[skip..skip + bytes.len()];
        out.copy_from_slice(bytes);
        out
    }
}

/// The header of segment `n`.
fn segment_header(n: u32) -> [u8; HEADER as usize] {
    let mut head = [0u8; HEADER as usize];
    head[..8].copy_from_slice(MAGIC);
    head[8..].copy_from_slice(&(n as u64).to_le_bytes());
    head
}

/// Makes the ready spare `spare` segment `n`: header written over its zeros, renamed,
/// durably (the file and its directory entry).
fn take_spare(dir: &Path, n: u32, spare: &Path) -> io::Result<(File, u32)> {
    let file = OpenOptions::new().read(true).write(true).open(spare)?;
    file.write_all_at(&segment_header(n), 0)?;
    file.sync_data()?;
    std::fs::rename(spare, segment_path(dir, n))?;
    File::open(dir)?.sync_all()?;
    Ok((file, n))
}

/// Reads bodies by location, for queries and index expressions. Cheap to clone; files are
/// opened once and kept.
#[derive(Clone)]
pub struct SegmentReader {
    dir: PathBuf,
    files: Arc<RwLock<HashMap<u32, Arc<File>>>>,
    damage: Arc<DamageLog>,
}

/// Reads of damaged records: how many, and when the log last said so. A listing over a
/// damaged record meets it on every read, so the log says it at most once per
/// [`LogThrottle::EVERY_MS`], with how many it passed over in between; the count is a metric.
#[derive(Default)]
struct DamageLog {
    reads: std::sync::atomic::AtomicU64,
    log: LogThrottle,
}

impl DamageLog {
    fn record(&self, e: &io::Error) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if let Some(also) = self.log.due() {
            tracing::error!(error = %e, also_since_last_report = also, "an event body cannot be read");
        }
    }
}

impl SegmentReader {
    pub fn new(dir: &Path) -> SegmentReader {
        SegmentReader {
            dir: dir.to_owned(),
            files: Arc::default(),
            damage: Arc::default(),
        }
    }

    /// How many reads met a damaged record (see [`SegmentReader::read_or_damaged`]) since
    /// this reader (or the reader it was cloned from) was made.
    pub fn damaged_reads(&self) -> u64 {
        self.damage.reads.load(Ordering::Relaxed)
    }

    /// [`SegmentReader::read`], with damage (a record whose length, CRC or UTF-8 is wrong,
    /// one cut short by the end of its file, or a segment file that is gone) as `Ok(None)`:
    /// counted and logged, at most once per ten seconds. Other IO errors stay errors.
    pub fn read_or_damaged(&self, loc: i64, len: u64) -> io::Result<Option<String>> {
        self.damaged_as_none(self.read(loc, len))
    }

    /// [`SegmentReader::read_or_damaged`] for one of a list of bodies read in turn (a
    /// listing's): without asking for the pages around it when it comes from disk (the
    /// caller asks for the exact pages of the rest, [`SegmentReader::will_need`]), and with
    /// whether it did (see [`read_cached`]).
    pub fn read_listed(&self, loc: i64, len: u64) -> io::Result<(Option<String>, bool)> {
        let mut slow = false;
        let body = self.read_inner(loc, len, &mut |_, _| slow = true);
        Ok((self.damaged_as_none(body)?, slow))
    }

    /// Asks the kernel to read the records of the bodies at `records` (`(loc, len)`) into
    /// the page cache, without waiting (`POSIX_FADV_WILLNEED`), so that the disk reads them
    /// in parallel. Records less than [`WILL_NEED_GAP`] apart are asked for as one range
    /// (one call for a listing whose events are neighbours, one per event for a sparse
    /// one). Advice only: errors change nothing but speed, and are not reported.
    pub fn will_need(&self, records: impl Iterator<Item = (i64, u64)>) {
        let mut ranges: Vec<(u32, u64, u64)> = records
            .map(|(loc, len)| {
                let (n, off) = split(loc);
                (n, off.saturating_sub(8), off + len)
            })
            .collect();
        ranges.sort_unstable();
        let advise = |(n, start, end): (u32, u64, u64)| {
            if let Ok(file) = self.file(n) {
                advise_will_need(&file, start, end - start);
            }
        };
        let mut run: Option<(u32, u64, u64)> = None;
        for (n, from, to) in ranges {
            match &mut run {
                Some((rn, _, end)) if *rn == n && from <= *end + WILL_NEED_GAP => {
                    *end = (*end).max(to);
                }
                _ => {
                    if let Some(done) = run.replace((n, from, to)) {
                        advise(done);
                    }
                }
            }
        }
        if let Some(done) = run {
            advise(done);
        }
    }

    fn damaged_as_none<T>(&self, read: io::Result<T>) -> io::Result<Option<T>> {
        match read {
            Ok(body) => Ok(Some(body)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData
                        | io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::NotFound
                ) =>
            {
                self.damage.record(&e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn file(&self, n: u32) -> io::Result<Arc<File>> {
        if let Some(f) = self.files.read().ok().and_then(|m| m.get(&n).cloned()) {
            return Ok(f);
        }
        let f = Arc::new(File::open(segment_path(&self.dir, n))?);
        if let Ok(mut m) = self.files.write() {
            m.insert(n, f.clone());
        }
        Ok(f)
    }

    /// The body of `len` bytes at `loc`, as text, checked against its record's length and
    /// CRC: a body the disk changed is an error, never served.
    pub fn read(&self, loc: i64, len: u64) -> io::Result<String> {
        self.read_inner(loc, len, &mut read_around)
    }

    /// [`SegmentReader::read`], calling `slow` with the file and the record's offset when the
    /// record is not all in the page cache, before reading it from disk ([`read_cached`]).
    fn read_inner(
        &self,
        loc: i64,
        len: u64,
        slow: &mut dyn FnMut(&File, u64),
    ) -> io::Result<String> {
        let (n, off) = split(loc);
        let damaged = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the event at segment {n} offset {off} is damaged: {what}"),
            )
        };
        let start = off
            .checked_sub(8)
            .ok_or_else(|| damaged("no record header"))?;
        let mut buf = vec![0u8; len as usize + 8];
        let file = self.file(n)?;
        match read_cached(&file, &mut buf, start) {
            Some(got) if got == buf.len() => {}
            Some(got) => {
                // Not all in the page cache: ask for what comes next before waiting.
                slow(&file, start);
                file.read_exact_at(&mut buf[got..], start + got as u64)?;
            }
            None => {
                let t = std::time::Instant::now();
                file.read_exact_at(&mut buf, start)?;
                if t.elapsed() >= SLOW_READ {
                    slow(&file, start);
                }
            }
        }
        let (stored_len, crc) = header(buf[..8].try_into().unwrap_or(&[0; 8]));
        if stored_len != len {
            return Err(damaged("its record has another length"));
        }
        if crc32fast::hash(&buf[8..]) != crc {
            return Err(damaged("its checksum does not match"));
        }
        buf.drain(..8);
        // The same test as `intact`, taking the buffer as the text instead of copying it.
        String::from_utf8(buf).map_err(|_| damaged("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(dir: &Path, after: Option<(i64, u64)>) -> Vec<String> {
        let mut out = Vec::new();
        replay(dir, after, None, &mut |_, b| {
            out.push(b.to_owned());
            Ok(())
        })
        .unwrap();
        out
    }

    /// Waits until the writer's helper has its spare ready.
    fn wait_for_spare(w: &SegmentWriter) {
        while w.spare.path().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// `{"seq":1}` to `{"seq":n}`.
    fn seq_bodies(n: u64) -> Vec<String> {
        (1..=n).map(|i| format!(r#"{{"seq":{i}}}"#)).collect()
    }

    /// Appends each body in its own synced write (each acknowledged); their locations.
    fn write_synced(dir: &Path, bodies: &[String]) -> Vec<i64> {
        let mut w = SegmentWriter::open(dir, 1 << 20, None).unwrap();
        bodies
            .iter()
            .map(|b| {
                let l = w.push(b);
                w.sync(true).unwrap();
                l
            })
            .collect()
    }

    /// The disk changes bytes of segment 1 (offset, new bytes); the file, for more changes.
    fn damage(dir: &Path, writes: &[(u64, &[u8])]) -> File {
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(dir, 1))
            .unwrap();
        for (at, bytes) in writes {
            f.write_all_at(bytes, *at).unwrap();
        }
        f
    }

    /// Every record of segment 1 that a scan keeps when all of it is acknowledged.
    fn kept(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let file = File::open(segment_path(dir, 1)).unwrap();
        let _ = scan_file(&file, 1, 0, u64::MAX, u64::MAX, false, &mut |_, b| {
            out.push(b.to_owned());
            Ok(())
        })
        .unwrap();
        out
    }

    /// Whether the file system of `dir` takes direct I/O (tmpfs does not).
    fn direct_io_in(dir: &Path) -> bool {
        let probe = dir.join("probe");
        File::create(&probe).unwrap();
        let taken = with_aligned_zeros(|zeros| zero_direct(&probe, PAGE, zeros)).unwrap() > 0;
        std::fs::remove_file(probe).unwrap();
        taken
    }

    #[test]
    fn records_are_read_back_by_location_and_in_order() {
        for direct in [false, true] {
            records_are_read_back(direct);
        }
    }

    fn records_are_read_back(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), 40, None).unwrap();
        w.set_direct(direct);
        let direct = direct && direct_io_in(dir.path());
        assert_eq!(w.is_direct(), direct);
        let a = w.push(r#"{"seq":1}"#);
        let b = w.push(r#"{"seq":2}"#);
        w.sync(true).unwrap();
        wait_for_spare(&w);
        w.roll_if_full().unwrap();
        assert_eq!(
            w.is_direct(),
            direct,
            "the next segment is written the same way"
        );
        let c = w.push(r#"{"seq":3}"#);
        w.sync(true).unwrap();
        assert_eq!(split(c).0, 2, "past 40 bytes the writer moved to segment 2");
        let r = SegmentReader::new(dir.path());
        assert_eq!(r.read(a, 9).unwrap(), r#"{"seq":1}"#);
        assert_eq!(r.read(c, 9).unwrap(), r#"{"seq":3}"#);
        assert_eq!(all(dir.path(), None).len(), 3);
        assert_eq!(
            all(dir.path(), Some((a, 9))),
            [r#"{"seq":2}"#, r#"{"seq":3}"#]
        );
        assert_eq!(all(dir.path(), Some((b, 9))), [r#"{"seq":3}"#]);
        assert!(all(dir.path(), Some((c, 9))).is_empty());
    }

    /// A record of `body` as the writer lays it out.
    fn record(body: &str) -> Vec<u8> {
        let mut rec = (body.len() as u32).to_le_bytes().to_vec();
        rec.extend_from_slice(&crc32fast::hash(body.as_bytes()).to_le_bytes());
        rec.extend_from_slice(body.as_bytes());
        rec
    }

    /// The ready spares in `dir`: (name, inode).
    fn ready_spares(dir: &Path) -> Vec<(String, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| is_spare_ready(&e.file_name().to_string_lossy()))
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, e.metadata().unwrap().ino())
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_ready_spare_outlives_a_restart_and_an_unfinished_one_does_not() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
        wait_for_spare(&w);
        drop(w);
        let spares = ready_spares(dir.path());
        assert_eq!(spares.len(), 1, "{spares:?}");
        let inode = spares[0].1;
        // Spares an earlier run was still writing when it stopped, and a smaller ready one
        // (two writers' helpers finished).
        let unfinished = ["spare.tmp", "spare.77.3.tmp"].map(|n| dir.path().join(n));
        for f in &unfinished {
            std::fs::write(f, [0u8; 100]).unwrap();
        }
        std::fs::write(dir.path().join("spare.77.4.ready"), [0u8; 100]).unwrap();
        let mut w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
        assert!(
            w.spare.path().is_some(),
            "ready at once: not prepared again"
        );
        assert_eq!(ready_spares(dir.path()), spares, "the largest was kept");
        assert!(unfinished.iter().all(|f| !f.exists()));
        // The writer moves into it when the current segment is full.
        w.pos = w.prepared;
        w.roll_if_full().unwrap();
        assert_eq!(w.number, 2);
        assert_eq!(
            std::fs::metadata(segment_path(dir.path(), 2))
                .unwrap()
                .ino(),
            inode
        );
    }

    #[test]
    fn a_spare_file_appearing_later_is_not_taken_for_this_writers() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
        wait_for_spare(&w);
        let own = w.spare.path().unwrap();
        // A helper of an earlier writer in this process finishes after this one opened.
        let stray = dir.path().join("spare.77.9.ready");
        std::fs::write(&stray, vec![1u8; 64 << 10]).unwrap();
        w.pos = w.prepared;
        w.roll_if_full().unwrap();
        assert!(!own.exists(), "its own spare became segment 2");
        assert!(stray.exists(), "the stray one was left alone");
        let mut head = [0u8; HEADER as usize];
        File::open(segment_path(dir.path(), 2))
            .unwrap()
            .read_exact_at(&mut head, 0)
            .unwrap();
        assert_eq!(&head[..8], MAGIC);
        assert!(
            File::open(segment_path(dir.path(), 2))
                .unwrap()
                .metadata()
                .unwrap()
                .len()
                > 64 << 10
        );
    }

    #[test]
    fn a_torn_tail_is_zeroed_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
        w.push(r#"{"seq":1}"#);
        w.sync(true).unwrap();
        w.push(r#"{"seq":2}"#);
        w.discard_unsynced();
        let end = w.pos;
        drop(w);
        // A crash in the middle of the next write leaves part of a record, nothing after it.
        let path = segment_path(dir.path(), 1);
        let torn = &record(r#"{"seq":2,"x":"a torn write"}"#)[..30];
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(torn, end).unwrap();
        drop(f);
        let mut w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
        assert_eq!(w.pos, end);
        assert_eq!(all(dir.path(), None), [r#"{"seq":1}"#]);
        let l3 = w.push(r#"{"seq":3}"#);
        w.sync(true).unwrap();
        assert_eq!(all(dir.path(), None), [r#"{"seq":1}"#, r#"{"seq":3}"#]);
        // The torn bytes past the new record were zeroed: nothing stale follows it.
        let mut after = vec![1u8; torn.len()];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut after, split(l3).1 + 9)
            .unwrap();
        assert!(after.iter().all(|&b| b == 0), "{after:?}");
        // A flipped bit in the last body ends the segment there.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", w.pos - 2).unwrap();
        assert_eq!(all(dir.path(), None), [r#"{"seq":1}"#]);
    }

    #[test]
    fn a_torn_write_keeps_its_records_that_reached_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
        w.push(r#"{"seq":1}"#);
        w.sync(true).unwrap();
        let end = w.pos;
        drop(w);
        // A power cut in the middle of a write of two records: the page of the second reached
        // the disk, the first only in part.
        let second = r#"{"seq":3,"x":"whole"}"#;
        let first = record(r#"{"seq":2,"x":"cut"}"#);
        let path = segment_path(dir.path(), 1);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&first[..12], end).unwrap();
        f.write_all_at(&record(second), end + first.len() as u64)
            .unwrap();
        drop(f);
        let mut w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
        let kept_end = end + first.len() as u64 + 8 + second.len() as u64;
        assert_eq!(w.pos, kept_end, "appends go after the kept record");
        assert_eq!(w.end(), loc(1, kept_end));
        w.push(r#"{"seq":4}"#);
        w.sync(true).unwrap();
        assert_eq!(
            all(dir.path(), None),
            [r#"{"seq":1}"#, second, r#"{"seq":4}"#]
        );
        // A replay stops at the writer's end, whatever lies past it.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&record(r#"{"seq":9}"#), w.pos + 100)
            .unwrap();
        let mut seen = Vec::new();
        replay(dir.path(), None, Some(w.end()), &mut |_, b| {
            seen.push(b.to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [r#"{"seq":1}"#, second, r#"{"seq":4}"#]);
    }

    #[test]
    fn damaged_records_among_acknowledged_ones_are_skipped_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let bodies: Vec<String> = (1..=6)
            .map(|i| format!(r#"{{"seq":{i},"x":"{}"}}"#, "a".repeat(i)))
            .collect();
        let locs = write_synced(dir.path(), &bodies);
        let end = split(locs[5]).1 + bodies[5].len() as u64;
        // The disk changes a byte of the second body and the length of the third record.
        damage(
            dir.path(),
            &[
                (split(locs[1]).1 + 3, b"Z"),
                (split(locs[2]).1 - 8, &[0xff, 0, 0, 0]),
            ],
        );
        let expected: Vec<String> = [0, 3, 4, 5].iter().map(|&i| bodies[i].clone()).collect();
        assert_eq!(kept(dir.path()), expected);
        // The index holds the fifth: the writer keeps everything up to it and the sixth after
        // it (acknowledged, not indexed yet), and appends after them.
        let ack = Some((locs[4], bodies[4].len() as u64));
        let mut w = SegmentWriter::open(dir.path(), 1 << 20, ack).unwrap();
        assert_eq!(w.pos, end, "nothing was cut");
        let seventh = r#"{"seq":7}"#;
        let l7 = w.push(seventh);
        w.sync(true).unwrap();
        let mut expected = expected;
        expected.push(seventh.to_owned());
        assert_eq!(kept(dir.path()), expected);
        // Reads check each body: the damaged ones are errors, the others are served.
        let r = SegmentReader::new(dir.path());
        for i in [1, 2] {
            let e = r.read(locs[i], bodies[i].len() as u64).unwrap_err();
            assert!(e.to_string().contains("damaged"), "{e}");
        }
        assert_eq!(r.read(locs[3], bodies[3].len() as u64).unwrap(), bodies[3]);
        assert_eq!(r.read(l7, seventh.len() as u64).unwrap(), seventh);
        // Without what the index holds (it has indexed none of them yet), nothing is cut
        // either: intact records follow the damaged ones.
        let end = w.pos;
        drop(w);
        let w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
        assert_eq!(w.pos, end);
        assert_eq!(kept(dir.path()), expected);
    }

    /// At start the writer's open scans the newest segment and the replay every segment
    /// after what the index holds: each damaged record is logged once, the newest segment's
    /// by the open, an older one's by the replay, and the replay passes over both.
    #[test]
    fn each_damaged_record_is_logged_once_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = seq_bodies(6);
        let mut w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
        let mut locs = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            if i == 3 {
                wait_for_spare(&w);
                w.pos = w.prepared;
                w.roll_if_full().unwrap();
                assert_eq!(w.number, 2);
            }
            locs.push(w.push(b));
            w.sync(true).unwrap();
        }
        drop(w);
        damage(dir.path(), &[(split(locs[1]).1 + 2, b"Z")]);
        OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 2))
            .unwrap()
            .write_all_at(b"Z", split(locs[4]).1 + 2)
            .unwrap();
        let ack = Some((locs[0], bodies[0].len() as u64));
        DAMAGE_REPORTS.with(|c| c.set(0));
        let w = SegmentWriter::open(dir.path(), 1 << 20, ack).unwrap();
        assert_eq!(DAMAGE_REPORTS.with(|c| c.get()), 1, "the newest segment's");
        let mut seen = Vec::new();
        replay(dir.path(), ack, Some(w.end()), &mut |_, b| {
            seen.push(b.to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [bodies[2].clone(), bodies[3].clone(), bodies[5].clone()]
        );
        assert_eq!(
            DAMAGE_REPORTS.with(|c| c.get()),
            2,
            "each damaged record once"
        );
    }

    #[test]
    fn damage_is_none_and_counted_other_errors_stay_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = seq_bodies(3);
        let locs = write_synced(dir.path(), &bodies);
        let r = SegmentReader::new(dir.path());
        let len = |i: usize| bodies[i].len() as u64;
        assert_eq!(
            r.read_or_damaged(locs[0], len(0)).unwrap(),
            Some(bodies[0].clone())
        );
        // A changed byte; a record past the end of its file; a segment that is gone.
        damage(dir.path(), &[(split(locs[1]).1 + 2, b"Z")])
            .set_len(split(locs[2]).1 + 2)
            .unwrap();
        assert_eq!(r.read_or_damaged(locs[1], len(1)).unwrap(), None);
        assert_eq!(r.read_or_damaged(locs[2], len(2)).unwrap(), None);
        let elsewhere = loc(2, split(locs[0]).1);
        assert_eq!(r.read_or_damaged(elsewhere, len(0)).unwrap(), None);
        assert_eq!(r.clone().damaged_reads(), 3, "clones share the count");
        assert_eq!(
            r.read_or_damaged(locs[0], len(0)).unwrap(),
            Some(bodies[0].clone())
        );
        // Not damage: a path the system refuses (a NUL byte in it) is an error, not a lost
        // record.
        let refused = SegmentReader::new(&dir.path().join("seg\0ments"));
        assert!(refused.read_or_damaged(locs[0], len(0)).is_err());
        assert_eq!(refused.damaged_reads(), 0);
    }

    #[test]
    fn after_damaged_acknowledged_records_a_torn_write_keeps_only_its_intact_records() {
        // The index holds the fourth record, whose body is damaged; the fifth and sixth are a
        // torn, unacknowledged write: the length of the fifth cut, and the sixth either damaged
        // too or on disk whole.
        for sixth_reached_the_disk in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let bodies = seq_bodies(6);
            let locs = write_synced(dir.path(), &bodies);
            let mut changes: Vec<(u64, &[u8])> = vec![
                (split(locs[3]).1 + 2, b"Z"),
                (split(locs[4]).1 - 8, &[0xff, 0xff, 0, 0]),
            ];
            if !sixth_reached_the_disk {
                changes.push((split(locs[5]).1 + 2, b"Z"));
            }
            damage(dir.path(), &changes);
            let ack = Some((locs[3], bodies[3].len() as u64));
            let mut w = SegmentWriter::open(dir.path(), 1 << 20, ack).unwrap();
            let mut expected = vec![r#"{"seq":1}"#, r#"{"seq":2}"#, r#"{"seq":3}"#];
            if sixth_reached_the_disk {
                let sixth_end = split(locs[5]).1 + bodies[5].len() as u64;
                assert_eq!(w.pos, sixth_end, "the sixth is kept, appends go after it");
                expected.push(r#"{"seq":6}"#);
            } else {
                let keep = split(locs[3]).1 + bodies[3].len() as u64;
                assert_eq!(w.pos, keep, "appends go right after what the index holds");
            }
            w.push(r#"{"seq":7}"#);
            w.sync(true).unwrap();
            expected.push(r#"{"seq":7}"#);
            assert_eq!(kept(dir.path()), expected);
        }
    }

    #[test]
    fn a_last_segment_cut_below_its_header_is_never_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = seq_bodies(3);
        let locs = write_synced(dir.path(), &bodies);
        damage(dir.path(), &[]).set_len(10).unwrap();
        // The index holds the third: the writer moves on to segment 2.
        let ack = Some((locs[2], bodies[2].len() as u64));
        let mut w = SegmentWriter::open(dir.path(), 1 << 20, ack).unwrap();
        assert_eq!(w.number, 2);
        let l = w.push(r#"{"seq":4}"#);
        w.sync(true).unwrap();
        assert_eq!(split(l).0, 2);
        assert_eq!(
            std::fs::metadata(segment_path(dir.path(), 1))
                .unwrap()
                .len(),
            10
        );
        let r = SegmentReader::new(dir.path());
        assert_eq!(
            r.read_or_damaged(locs[2], bodies[2].len() as u64).unwrap(),
            None
        );
        // Without records in the index, the segment is simply started again.
        drop(w);
        let dir = tempfile::tempdir().unwrap();
        write_synced(dir.path(), &bodies);
        damage(dir.path(), &[]).set_len(10).unwrap();
        let w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
        assert_eq!((w.number, w.pos), (1, HEADER));
    }

    #[test]
    fn a_lost_last_segment_is_never_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), 40, None).unwrap();
        w.push(r#"{"seq":0}"#);
        w.push(r#"{"seq":1}"#);
        w.sync(true).unwrap();
        wait_for_spare(&w);
        w.roll_if_full().unwrap();
        let l2 = w.push(r#"{"seq":2}"#);
        w.sync(true).unwrap();
        assert_eq!(split(l2).0, 2);
        drop(w);
        // Segment 2, which holds the newest event the index has, is gone.
        std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
        let w = SegmentWriter::open(dir.path(), 40, Some((l2, 9))).unwrap();
        assert_eq!(w.number, 3, "appends start after it");
        drop(w);
        // And with every segment gone.
        for n in 1..=3 {
            let _ = std::fs::remove_file(segment_path(dir.path(), n));
        }
        let w = SegmentWriter::open(dir.path(), 40, Some((l2, 9))).unwrap();
        assert_eq!(w.number, 3);
    }

    /// The whole content of segment 1.
    fn segment_bytes(dir: &Path) -> Vec<u8> {
        std::fs::read(segment_path(dir, 1)).unwrap()
    }

    #[test]
    fn whole_page_writes_keep_every_earlier_byte() {
        for direct in [false, true] {
            whole_page_writes(direct);
        }
    }

    /// Also checks that a reader which holds the last page in the page cache (it read the
    /// newest record) reads the records the next write puts in that page, when that write
    /// is direct: the kernel drops the cached page.
    fn whole_page_writes(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
        w.set_direct(direct);
        assert_eq!(w.is_direct(), direct && direct_io_in(dir.path()));
        let reader = SegmentReader::new(dir.path());
        // What the file must hold: the header, then every synced record, then zeros.
        let mut expected = segment_header(1).to_vec();
        let mut locs = Vec::new();
        let mut n = 0u64;
        for round in 0..120 {
            if round % 17 == 5 {
                // A failed group: its records are forgotten, the next ones take their place.
                let lost = w.push(r#"{"seq":0,"lost":true}"#);
                assert_eq!(split(lost).1 as usize, expected.len() + 8);
                w.discard_unsynced();
            }
            // Groups of 1 to 3 records of 1 to ~3,000 bytes: writes start and end anywhere
            // in a page, some span several pages, some stay within one.
            for _ in 0..1 + round % 3 {
                n += 1;
                let pad = "x".repeat((n * 397 % 2900) as usize);
                let body = format!(r#"{{"seq":{n},"pad":"{pad}"}}"#);
                locs.push((w.push(&body), body.clone()));
                expected.extend_from_slice(&record(&body));
            }
            w.sync(true).unwrap();
            let (l, body) = locs.last().unwrap();
            assert_eq!(
                &reader.read(*l, body.len() as u64).unwrap(),
                body,
                "round {round}"
            );
            let file = segment_bytes(dir.path());
            let differ = file.iter().zip(&expected).position(|(a, b)| a != b);
            assert_eq!(differ, None, "first byte that differs, after round {round}");
            assert!(
                file[expected.len()..].iter().all(|&b| b == 0),
                "zeros follow the records (round {round})"
            );
            if round % 40 == 39 {
                // Reopened in the middle of a page: the next write starts from that page's bytes
                // as the file holds them.
                drop(w);
                w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
                w.set_direct(direct);
                assert_eq!(w.pos, expected.len() as u64);
            }
        }
        let r = SegmentReader::new(dir.path());
        for (l, body) in &locs {
            assert_eq!(&r.read(*l, body.len() as u64).unwrap(), body);
        }
        assert_eq!(all(dir.path(), None).len(), locs.len());
        assert_eq!(
            segment_bytes(dir.path()).len() as u64,
            FIRST_SEGMENT.min(1 << 20),
            "the padding never grew the file"
        );
    }

    #[test]
    fn zero_files_are_whole_at_any_size() {
        let dir = tempfile::tempdir().unwrap();
        for bytes in [
            0,
            100,
            PAGE,
            3 * PAGE + 1,
            (1 << 20) + PAGE,
            (2 << 20) + 5000,
        ] {
            let path = dir.path().join(format!("z{bytes}"));
            std::fs::write(&path, vec![7u8; (bytes + 9000) as usize]).unwrap();
            zero_file(&path, bytes).unwrap();
            let got = std::fs::read(&path).unwrap();
            assert_eq!(got.len() as u64, bytes);
            assert!(got.iter().all(|&b| b == 0), "{bytes} bytes");
        }
    }

    /// Bytes this thread made the kernel read from storage.
    #[cfg(target_os = "linux")]
    fn read_bytes() -> u64 {
        std::fs::read_to_string("/proc/thread-self/io")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("read_bytes: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Which of the first `pages` pages of `file` the page cache holds.
    #[cfg(target_os = "linux")]
    fn resident(file: &File, pages: usize) -> Vec<bool> {
        use std::os::fd::AsRawFd;
        let len = pages * PAGE as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: maps `len` bytes of an open file read-only, asks which pages are resident
        // into a vector of one byte per page, and unmaps it; nothing reads the mapping.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(at, libc::MAP_FAILED);
            assert_eq!(libc::mincore(at, len, vec.as_mut_ptr()), 0);
            libc::munmap(at, len);
        }
        vec.iter().map(|&b| b & 1 == 1).collect()
    }

    /// [`resident`], once `done` says so or after 2 s: the kernel reads what it is advised
    /// to in the background.
    #[cfg(target_os = "linux")]
    fn resident_once(file: &File, pages: usize, done: impl Fn(&[bool]) -> bool) -> Vec<bool> {
        let mut held = resident(file, pages);
        for _ in 0..200 {
            if done(&held) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            held = resident(file, pages);
        }
        held
    }

    /// A segment of 3,000 records of about 800 bytes written with direct I/O, in groups of
    /// 50, none of its pages in the page cache (checked); `None` (said on stderr) where the
    /// file system has no direct I/O. With the directory, writer, body and locations.
    #[cfg(target_os = "linux")]
    fn direct_segment() -> Option<(tempfile::TempDir, SegmentWriter, String, Vec<i64>)> {
        let dir = tempfile::tempdir().unwrap();
        if !direct_io_in(dir.path()) {
            eprintln!("no direct I/O on this file system: nothing to check");
            return None;
        }
        let mut w = SegmentWriter::open(dir.path(), 4 << 20, None).unwrap();
        w.set_direct(true);
        let body = format!(r#"{{"note":"{}"}}"#, "z".repeat(780));
        let mut locs = Vec::new();
        for _ in 0..3000 {
            locs.push(w.push(&body));
            if locs.len() % 50 == 0 {
                w.sync(true).unwrap();
            }
        }
        w.sync(true).unwrap();
        let file = File::open(segment_path(dir.path(), 1)).unwrap();
        assert!(
            resident(&file, w.pos.div_ceil(PAGE) as usize)
                .iter()
                .all(|r| !r),
            "direct writes leave nothing in the page cache"
        );
        Some((dir, w, body, locs))
    }

    /// A body read from disk (segments written with direct I/O leave the page cache without
    /// them) brings the pages before it into the page cache, for a scan that reads newest
    /// first.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_body_read_from_disk_reads_the_pages_before_it() {
        let Some((dir, w, body, locs)) = direct_segment() else {
            return;
        };
        let file = File::open(segment_path(dir.path(), 1)).unwrap();
        let pages = (w.pos / PAGE) as usize;
        let last = *locs.last().unwrap();
        let at = split(last).1;
        SegmentReader::new(dir.path())
            .read(last, body.len() as u64)
            .unwrap();
        let wanted = (at.saturating_sub(READ_BEHIND) / PAGE) as usize..(at / PAGE) as usize;
        let cached = resident_once(&file, pages, |h| h[wanted.clone()].iter().all(|r| *r));
        let held = cached[wanted.clone()].iter().filter(|r| **r).count();
        assert_eq!(
            held,
            wanted.len(),
            "pages before the body in the page cache"
        );
    }

    /// `will_need` brings in the pages of the records it is given, and not those far from
    /// any of them: a listing of a sparse type asks for its own events' pages only.
    #[cfg(target_os = "linux")]
    #[test]
    fn will_need_reads_the_pages_of_the_records_asked_for() {
        let Some((dir, w, body, locs)) = direct_segment() else {
            return;
        };
        let file = File::open(segment_path(dir.path(), 1)).unwrap();
        let pages = w.pos.div_ceil(PAGE) as usize;
        // Every 50th record, newest first as a listing has them: about 39 KB apart.
        let wanted: Vec<(i64, u64)> = locs
            .iter()
            .rev()
            .step_by(50)
            .map(|&l| (l, body.len() as u64))
            .collect();
        SegmentReader::new(dir.path()).will_need(wanted.iter().copied());
        let page_of = |at: u64| (at / PAGE) as usize;
        let mut want_pages = vec![false; pages];
        for &(l, len) in &wanted {
            let off = split(l).1;
            want_pages[page_of(off - 8)..=page_of(off + len - 1)].fill(true);
        }
        let held = resident_once(&file, pages, |held| {
            want_pages.iter().zip(held).all(|(w, h)| !w || *h)
        });
        let missing = (0..pages).filter(|&p| want_pages[p] && !held[p]).count();
        assert_eq!(
            missing, 0,
            "pages of the records asked for that are not cached"
        );
        let extra = (0..pages).filter(|&p| held[p] && !want_pages[p]).count();
        let asked = want_pages.iter().filter(|w| **w).count();
        assert!(
            extra <= asked,
            "{extra} pages cached beyond the {asked} asked for (of {pages})"
        );
    }

    /// Appends over a spare zero-filled with direct I/O (not in the page cache) read nothing
    /// from the disk: each write covers whole pages. With writes that start at the end of the
    /// last record, every group that starts in a new page read that page first.
    #[cfg(target_os = "linux")]
    #[test]
    fn appends_over_direct_zeros_read_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        File::create(&probe).unwrap();
        if with_aligned_zeros(|zeros| zero_direct(&probe, PAGE, zeros)).unwrap() == 0 {
            eprintln!("no direct I/O on this file system: nothing to check");
            return;
        }
        let mut w = SegmentWriter::open(dir.path(), 1 << 20, None).unwrap();
        let body = format!(r#"{{"note":"{}"}}"#, "y".repeat(740));
        let before = read_bytes();
        for _ in 0..200 {
            for _ in 0..3 {
                w.push(&body);
            }
            w.sync(true).unwrap();
        }
        let read = read_bytes() - before;
        assert_eq!(
            read,
            0,
            "600 records of {} bytes read {read} bytes",
            body.len()
        );
        assert_eq!(all(dir.path(), None).len(), 600);
    }
}
