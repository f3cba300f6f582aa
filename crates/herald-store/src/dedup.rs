//! The duplicate-key index: which stored events may hold a given duplicate key (`dkey`, the
//! core's hash of `source` and `id`), so that the writer can tell a new event from a
//! duplicate or a conflict, and a read by id can find its event.
//!
//! It replaces a SQLite index on `events(dkey)`. Keys are hashes, so that index took each
//! new key at a random place in the whole history: once it outgrew a commit's worth of
//! inserts, every insert dirtied a page of its own, which each commit then wrote to the WAL
//! and the checkpointer copied again (16 KiB per event), and indexing cost grew with the
//! number of events stored. Here the keys of recent events are held in memory, and older
//! ones in immutable sorted files written once and merged now and then (a log-structured
//! merge of `(dkey, seq)` pairs), so the cost per event stays the same however many are
//! stored:
//!
//! - `recent`: a hash map of the keys of the events stored since the newest run, filled by
//!   the writer as it gives events their seqs. At `recent_max` keys (2^20 by default) it
//!   is frozen (still read) and handed to the builder thread, which writes it out as a run.
//! - runs (`DATA_DIR/dedup/run-<after>-<through>.dk`): the keys of every event with a seq in
//!   `(after, through]`, sorted by `(dkey, seq)`, 16 bytes each, with a CRC. The runs form a
//!   chain from seq 0; each is read into memory only as a sparse index (the first key of
//!   every block of [`BLOCK`] entries) and a Bloom filter (10 bits per key), so that a key
//!   absent from a run costs a few instructions and a present one a `pread` of one block.
//!   When four neighbouring runs are of the same size class (powers of 4 of `recent_max`),
//!   or smaller ones were left before a larger one, the builder merges them into one (each
//!   key is rewritten about log4(events/recent_max) times, sequentially), checking its
//!   inputs as they are read.
//!
//! The index only says where to look: every candidate seq is checked against the event
//! itself (in `pending` or SQLite). So a key whose event was never acknowledged (its group
//! failed) or was deleted since does no harm. It can always be rebuilt from SQLite's
//! `events(seq, dkey)`: at open, the keys of the events past the chain of intact runs are
//! read back (into runs of `recent_max`, then into `recent`), which also converts a data
//! directory that had the SQLite index; a damaged or missing run is rebuilt that way.

use crate::throttle::LogThrottle;
use crate::StoreError;
use rusqlite::Connection;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Keys held in memory before they are written out as a run, by default
/// (`SqliteOptions::dedup_memory_keys`; called `recent_max` here).
pub const DEFAULT_RECENT_MAX: usize = 1 << 20;

/// Entries per block: a present key costs one `pread` of `BLOCK * 16` bytes.
const BLOCK: usize = 256;
const ENTRY: usize = 16;
const MAGIC: &[u8; 8] = b"HRLDDK01";
/// Magic, count, after, through.
const HEADER: usize = 32;
/// Bloom filter bits per key (about 1% false positives with 7 probes in 512-bit blocks).
const BLOOM_BITS_PER_KEY: usize = 10;
/// Runs of one size class merged at once.
const FAN_IN: usize = 4;
/// A failed run write is tried again after this long.
const RETRY: Duration = Duration::from_secs(5);

/// The shared index; see the module documentation.
pub(crate) struct DedupIndex {
    shared: Arc<Shared>,
    wake: Mutex<Option<SyncSender<()>>>,
    builder: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    dir: PathBuf,
    /// Keys in `recent` that freeze it.
    recent_max: usize,
    state: RwLock<State>,
    stop: AtomicBool,
}

#[derive(Default)]
struct State {
    recent: Keys,
    /// `recent` holds the keys of the events with a seq past this.
    recent_after: u64,
    /// Being written as a run; still read.
    frozen: Option<Arc<Frozen>>,
    /// Oldest first; `runs[i + 1].after == runs[i].through`, `runs[0].after == 0`. Replaced
    /// whole when it changes, so that a lookup reads the runs without holding the lock.
    runs: Arc<Vec<Arc<Run>>>,
}

struct Frozen {
    keys: Keys,
    after: u64,
    through: u64,
}

/// Keys in memory: almost every key has one seq; the others of a key (events whose keys
/// collide, which a sender can make on purpose) go to `more`. Both maps hash with a seed
/// drawn at random for each map ([`RandomState`]), so that crafted keys cannot make them
/// slow; foldhash rather than std's SipHash, which was an eighth of the writer's
/// instructions with the writer's other map (`sqlite::Pending`).
#[derive(Default)]
struct Keys {
    one: HashMap<u64, u64, RandomState>,
    more: HashMap<u64, Vec<u64>, RandomState>,
    extra: usize,
}

/// The hasher of the writer's maps of duplicate keys.
pub(crate) type RandomState = foldhash::fast::RandomState;

impl Keys {
    fn len(&self) -> usize {
        self.one.len() + self.extra
    }

    fn insert(&mut self, key: u64, seq: u64) {
        use std::collections::hash_map::Entry;
        match self.one.entry(key) {
            Entry::Vacant(v) => {
                v.insert(seq);
            }
            Entry::Occupied(first) if *first.get() == seq => {}
            Entry::Occupied(_) => {
                let more = self.more.entry(key).or_default();
                if !more.contains(&seq) {
                    more.push(seq);
                    self.extra += 1;
                }
            }
        }
    }

    fn find(&self, key: u64, out: &mut Vec<u64>) {
        if let Some(s) = self.one.get(&key) {
            out.push(*s);
            if let Some(more) = self.more.get(&key) {
                out.extend_from_slice(more);
            }
        }
    }

    fn sorted(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.one.iter().map(|(k, s)| (*k, *s)).collect();
        for (k, seqs) in &self.more {
            v.extend(seqs.iter().map(|s| (*k, *s)));
        }
        v.sort_unstable();
        v
    }
}

impl DedupIndex {
    /// Opens the index in `dir`, reading back from `conn` the keys of the events its runs
    /// lack, and starts the builder thread. `max_seq` is the highest seq stored: runs past
    /// it are dropped (they hold seqs handed out to groups that failed, which will be handed
    /// out again, or they belong to another history), and their events' keys read back.
    pub(crate) fn open(
        dir: &Path,
        conn: &Connection,
        max_seq: u64,
        recent_max: usize,
    ) -> Result<Arc<DedupIndex>, StoreError> {
        let recent_max = recent_max.max(1);
        let err = |what: &str, e: std::io::Error| {
            StoreError::Database(format!("{what} {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| err("cannot create", e))?;
        let mut runs =
            load_chain(dir).map_err(|e| err("cannot read the duplicate-key runs in", e))?;
        while runs.last().is_some_and(|r| r.through > max_seq) {
            let run = runs.pop().expect("a last run");
            tracing::info!(path = %run.path.display(), max_seq, "removing a run of duplicate keys past the newest stored event");
            // It must not come back: its seqs are handed out again, to other events.
            std::fs::remove_file(&run.path)
                .map_err(|e| err("cannot remove a stale duplicate-key run in", e))?;
        }
        sync_dir(dir).map_err(|e| err("cannot sync", e))?;
        let mut state = State {
            recent_after: runs.last().map_or(0, |r| r.through),
            runs: Arc::new(runs),
            ..State::default()
        };
        read_back(dir, conn, &mut state, recent_max)?;
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            recent_max,
            state: RwLock::new(state),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = sync_channel(1);
        let s = shared.clone();
        let builder = std::thread::Builder::new()
            .name("herald-dedup".into())
            .spawn(move || builder(s, rx))
            .map_err(|e| StoreError::Database(format!("cannot start the dedup thread: {e}")))?;
        // Runs written by the read-back may be due for a merge.
        let _ = tx.try_send(());
        Ok(Arc::new(DedupIndex {
            shared,
            wake: Mutex::new(Some(tx)),
            builder: Mutex::new(Some(builder)),
        }))
    }

    /// Adds the keys of newly stored events; `through` is the highest seq handed out so far.
    pub(crate) fn insert(&self, entries: &[(u64, u64)], through: u64) {
        if entries.is_empty() {
            return;
        }
        let mut st = self.shared.write();
        for (k, s) in entries {
            st.recent.insert(*k, *s);
        }
        if st.recent.len() >= self.shared.recent_max && st.frozen.is_none() {
            let keys = std::mem::take(&mut st.recent);
            let after = std::mem::replace(&mut st.recent_after, through);
            st.frozen = Some(Arc::new(Frozen {
                keys,
                after,
                through,
            }));
            drop(st);
            if let Some(tx) = &*self.wake.lock().unwrap_or_else(|p| p.into_inner()) {
                let _ = tx.try_send(());
            }
        }
    }

    /// Appends to `out` the seqs that may hold `key`; the caller checks each.
    pub(crate) fn candidates(&self, key: u64, out: &mut Vec<u64>) -> std::io::Result<()> {
        let runs = {
            let st = self.shared.read();
            st.recent.find(key, out);
            if let Some(f) = &st.frozen {
                f.keys.find(key, out);
            }
            st.runs.clone()
        };
        // Without the lock: a slow read must not hold up the writer's `insert`.
        for run in runs.iter().rev() {
            run.find(key, out)?;
        }
        Ok(())
    }

    /// Stops the builder thread. A run or merge being written is abandoned (its inputs stay:
    /// frozen keys are read back from SQLite at the next start).
    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.wake.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self
            .builder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = h.join();
        }
    }

    /// Keys held in memory: `recent` and a frozen map being written.
    pub(crate) fn keys_in_memory(&self) -> usize {
        let st = self.shared.read();
        st.recent.len() + st.frozen.as_ref().map_or(0, |f| f.keys.len())
    }

    /// (runs, keys in memory), for tests.
    #[cfg(test)]
    pub(crate) fn shape(&self) -> (usize, usize) {
        let runs = self.shared.read().runs.len();
        (runs, self.keys_in_memory())
    }
}

impl Drop for DedupIndex {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads back from SQLite the keys of the events past the runs: whole runs of
/// `recent_max` written at once, the rest into `recent`.
fn read_back(
    dir: &Path,
    conn: &Connection,
    state: &mut State,
    recent_max: usize,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut logged = started;
    let mut st = conn.prepare("SELECT seq, dkey FROM events WHERE seq > ?1 ORDER BY seq")?;
    let mut rows = st.query([state.recent_after as i64])?;
    let mut chunk: Vec<(u64, u64)> = Vec::new();
    let mut read = 0u64;
    while let Some(r) = rows.next()? {
        let seq = r.get::<_, i64>(0)? as u64;
        let key = r.get::<_, i64>(1)? as u64;
        chunk.push((key, seq));
        read += 1;
        if chunk.len() == recent_max {
            let after = state.recent_after;
            chunk.sort_unstable();
            let run =
                Run::write(dir, after, seq, &chunk, &AtomicBool::new(false)).map_err(|e| {
                    StoreError::Database(format!(
                        "cannot write a duplicate-key run in {}: {e}",
                        dir.display()
                    ))
                })?;
            Arc::make_mut(&mut state.runs).push(Arc::new(run));
            state.recent_after = seq;
            chunk.clear();
            if logged.elapsed() > Duration::from_secs(10) {
                logged = std::time::Instant::now();
                tracing::info!(
                    events = read,
                    "still reading back the duplicate keys of stored events"
                );
            }
        }
    }
    for (k, s) in chunk {
        state.recent.insert(k, s);
    }
    if read > recent_max as u64 {
        tracing::info!(
            events = read,
            seconds = started.elapsed().as_secs_f64(),
            "read back the duplicate keys of stored events"
        );
    }
    Ok(())
}

/// The builder thread: writes frozen keys out as runs and merges runs, until stopped.
fn builder(shared: Arc<Shared>, rx: Receiver<()>) {
    crate::sqlite::lower_priority();
    let failures = LogThrottle::default();
    let mut damaged_input = false;
    loop {
        let frozen = shared.read().frozen.clone();
        let mut retry = false;
        if let Some(f) = frozen {
            let entries = f.keys.sorted();
            match Run::write(&shared.dir, f.after, f.through, &entries, &shared.stop) {
                Ok(run) => {
                    let mut st = shared.write();
                    let mut runs = Vec::clone(&st.runs);
                    runs.push(Arc::new(run));
                    st.runs = Arc::new(runs);
                    st.frozen = None;
                }
                Err(_) if shared.stop.load(Ordering::Acquire) => return,
                Err(e) => {
                    retry = true;
                    if let Some(n) = failures.due() {
                        tracing::error!(error = %e, dir = %shared.dir.display(), repeated = n, "cannot write a run of duplicate keys; they stay in memory, trying again");
                    }
                }
            }
        }
        while !retry && !damaged_input && !shared.stop.load(Ordering::Acquire) {
            let runs = shared.read().runs.clone();
            let Some(at) = due_merge(&runs, shared.recent_max) else {
                break;
            };
            let inputs = &runs[at..at + FAN_IN];
            match merge(&shared.dir, inputs, &shared.stop) {
                Ok(Some(run)) => {
                    let mut st = shared.write();
                    // Only this thread changes the runs: they are still where they were.
                    let mut now = Vec::clone(&st.runs);
                    now.splice(at..at + FAN_IN, [Arc::new(run)]);
                    st.runs = Arc::new(now);
                    drop(st);
                    for r in inputs {
                        let _ = std::fs::remove_file(&r.path);
                    }
                }
                Ok(None) => break,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    // A run changed on disk since it was checked: merging it again will not
                    // help. The next start finds it damaged and reads its keys back.
                    damaged_input = true;
                    tracing::error!(error = %e, "a run of duplicate keys is damaged; no more merges until Herald restarts, which rebuilds it");
                }
                Err(e) => {
                    retry = true;
                    if let Some(n) = failures.due() {
                        tracing::error!(error = %e, dir = %shared.dir.display(), repeated = n, "cannot merge runs of duplicate keys; trying again");
                    }
                }
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let waited = if retry {
            rx.recv_timeout(RETRY)
        } else {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        if let Err(RecvTimeoutError::Disconnected) = waited {
            return;
        }
    }
}

/// The size class of a run: 0 below 4 x `recent_max` keys, then one more per factor of 4.
fn class(count: u64, recent_max: usize) -> u32 {
    let units = (count / recent_max.max(1) as u64).max(1);
    units.ilog2() / 2
}

/// Where the newest `FAN_IN` neighbouring runs start whose oldest is of the lowest size
/// class among them: four of one class, or smaller runs left before a larger one (a frozen
/// map that grew while the builder was busy), which would otherwise never be merged.
fn due_merge(runs: &[Arc<Run>], recent_max: usize) -> Option<usize> {
    if runs.len() < FAN_IN {
        return None;
    }
    (0..=runs.len() - FAN_IN).rev().find(|&i| {
        let c = class(runs[i].count, recent_max);
        runs[i + 1..i + FAN_IN]
            .iter()
            .all(|r| class(r.count, recent_max) >= c)
    })
}

/// One immutable sorted file of `(dkey, seq)` pairs.
pub(crate) struct Run {
    path: PathBuf,
    file: File,
    after: u64,
    through: u64,
    count: u64,
    /// The key of the first entry of each block.
    fences: Vec<u64>,
    bloom: Bloom,
}

fn run_name(after: u64, through: u64) -> String {
    format!("run-{after:020}-{through:020}.dk")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("run-")?.strip_suffix(".dk")?;
    let (a, t) = rest.split_once('-')?;
    Some((a.parse().ok()?, t.parse().ok()?))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn damaged(path: &Path, why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: {why}", path.display()),
    )
}

impl Run {
    /// Writes `entries` (sorted) as the run of `(after, through]`.
    fn write(
        dir: &Path,
        after: u64,
        through: u64,
        entries: &[(u64, u64)],
        stop: &AtomicBool,
    ) -> std::io::Result<Run> {
        let mut w = RunWriter::create(dir, after, through, entries.len() as u64)?;
        for e in entries {
            w.push(*e, stop)?;
        }
        w.finish()
    }

    /// Reads a run back: checks its header, length, order, seq range and CRC, and builds
    /// its sparse index and Bloom filter.
    fn load(path: &Path) -> std::io::Result<Run> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let (after, through) = parse_name(name).ok_or_else(|| damaged(path, "not a run's name"))?;
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut head = [0u8; HEADER];
        file.read_exact_at(&mut head, 0)?;
        let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        if &head[..8] != MAGIC || word(16) != after || word(24) != through {
            return Err(damaged(path, "bad header"));
        }
        // Checked before anything is sized by it (a changed bit must not ask for petabytes).
        let count = word(8);
        let body = len.checked_sub(HEADER as u64 + 4);
        if body != count.checked_mul(ENTRY as u64) {
            return Err(damaged(path, "length differs from the header's count"));
        }
        let run = Run {
            path: path.to_owned(),
            file,
            after,
            through,
            count,
            fences: Vec::new(),
            bloom: Bloom { blocks: Vec::new() },
        };
        let mut fences = Vec::with_capacity(count as usize / BLOCK + 1);
        let mut bloom = Bloom::new(count as usize);
        let mut r = RunReader::new(&run)?;
        let mut i = 0u64;
        while let Some(e) = r.next()? {
            if i % BLOCK as u64 == 0 {
                fences.push(e.0);
            }
            bloom.add(e.0);
            i += 1;
        }
        Ok(Run {
            fences,
            bloom,
            ..run
        })
    }

    /// Appends the seqs this run holds for `key`.
    fn find(&self, key: u64, out: &mut Vec<u64>) -> std::io::Result<()> {
        if !self.bloom.may_hold(key) {
            return Ok(());
        }
        // The first block that may hold the key: the last one starting below it (a key's
        // entries may begin at the end of the block before the one it starts).
        let mut block = self.fences.partition_point(|&f| f < key).saturating_sub(1);
        let mut buf = [0u8; BLOCK * ENTRY];
        while block < self.fences.len() {
            if self.fences[block] > key {
                break;
            }
            let first = block as u64 * BLOCK as u64;
            let n = (self.count - first).min(BLOCK as u64) as usize;
            let bytes = &mut buf[..n * ENTRY];
            self.file
                .read_exact_at(bytes, HEADER as u64 + first * ENTRY as u64)?;
            let mut past = false;
            for e in bytes.chunks_exact(ENTRY) {
                let k = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
                if k == key {
                    out.push(u64::from_le_bytes(e[8..].try_into().expect("8 bytes")));
                } else if k > key {
                    past = true;
                    break;
                }
            }
            if past {
                break;
            }
            block += 1;
        }
        Ok(())
    }
}

/// Writes a run to a temporary file, fsynced, then renamed into place; a writer dropped
/// unfinished removes its file.
struct RunWriter {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
    w: Option<BufWriter<File>>,
    after: u64,
    through: u64,
    count: u64,
    n: u64,
    crc: crc32fast::Hasher,
    fences: Vec<u64>,
    bloom: Bloom,
    last: Option<(u64, u64)>,
}

impl RunWriter {
    fn create(dir: &Path, after: u64, through: u64, count: u64) -> std::io::Result<RunWriter> {
        let path = dir.join(run_name(after, through));
        let tmp = path.with_extension("tmp");
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let mut rw = RunWriter {
            dir: dir.to_owned(),
            path,
            tmp,
            w: None,
            after,
            through,
            count,
            n: 0,
            crc: crc32fast::Hasher::new(),
            fences: Vec::with_capacity(count as usize / BLOCK + 1),
            bloom: Bloom::new(count as usize),
            last: None,
        };
        let head = header(count, after, through);
        w.write_all(&head)?;
        rw.crc.update(&head);
        rw.w = Some(w);
        Ok(rw)
    }

    /// Adds the next entry (in order); fails with `Interrupted` once `stop` is set.
    fn push(&mut self, e: (u64, u64), stop: &AtomicBool) -> std::io::Result<()> {
        if self.last.is_some_and(|l| l >= e) || self.n == self.count {
            return Err(damaged(&self.tmp, "entries out of order or too many"));
        }
        if self.n % BLOCK as u64 == 0 {
            self.fences.push(e.0);
            if stop.load(Ordering::Relaxed) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "stopped",
                ));
            }
        }
        let mut b = [0u8; ENTRY];
        b[..8].copy_from_slice(&e.0.to_le_bytes());
        b[8..].copy_from_slice(&e.1.to_le_bytes());
        self.crc.update(&b);
        if let Some(w) = &mut self.w {
            w.write_all(&b)?;
        }
        self.bloom.add(e.0);
        self.last = Some(e);
        self.n += 1;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<Run> {
        if self.n != self.count {
            return Err(damaged(&self.tmp, "fewer entries than the header's count"));
        }
        let w = self.w.as_mut().expect("open until finished");
        w.write_all(&self.crc.clone().finalize().to_le_bytes())?;
        w.flush()?;
        w.get_ref().sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        // Renamed: nothing to remove any more, whatever happens next.
        self.w = None;
        sync_dir(&self.dir)?;
        Ok(Run {
            file: File::open(&self.path)?,
            path: self.path.clone(),
            after: self.after,
            through: self.through,
            count: self.count,
            fences: std::mem::take(&mut self.fences),
            bloom: std::mem::replace(&mut self.bloom, Bloom { blocks: Vec::new() }),
        })
    }
}

impl Drop for RunWriter {
    /// An unfinished run (abandoned, or a write, flush, fsync or rename failed) leaves
    /// nothing behind.
    fn drop(&mut self) {
        if self.w.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a run's entries in order, checking as it goes that they are in order and within
/// the run's seq range, and at the end its CRC (header included): merges check their
/// inputs as loading does, so that a run changed on disk since is not copied into a new
/// one under a valid CRC.
struct RunReader<'a> {
    run: &'a Run,
    r: BufReader<File>,
    left: u64,
    crc: crc32fast::Hasher,
    last: Option<(u64, u64)>,
    /// The CRC was read and matched.
    checked: bool,
}

impl<'a> RunReader<'a> {
    fn new(run: &'a Run) -> std::io::Result<RunReader<'a>> {
        let mut f = run.file.try_clone()?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut head = [0u8; HEADER];
        r.read_exact(&mut head)?;
        if head != header(run.count, run.after, run.through) {
            return Err(damaged(&run.path, "bad header"));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        Ok(RunReader {
            run,
            r,
            left: run.count,
            crc,
            last: None,
            checked: false,
        })
    }

    fn next(&mut self) -> std::io::Result<Option<(u64, u64)>> {
        if self.left == 0 {
            if !self.checked {
                let mut c = [0u8; 4];
                self.r.read_exact(&mut c)?;
                if u32::from_le_bytes(c) != self.crc.clone().finalize() {
                    return Err(damaged(&self.run.path, "CRC mismatch"));
                }
                self.checked = true;
            }
            return Ok(None);
        }
        self.left -= 1;
        let mut b = [0u8; ENTRY];
        self.r.read_exact(&mut b)?;
        self.crc.update(&b);
        let e = (
            u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
        );
        if self.last.is_some_and(|l| l >= e) {
            return Err(damaged(&self.run.path, "entries out of order"));
        }
        if e.1 <= self.run.after || e.1 > self.run.through {
            return Err(damaged(&self.run.path, "a seq outside the run's range"));
        }
        self.last = Some(e);
        Ok(Some(e))
    }
}

/// A run file's header.
fn header(count: u64, after: u64, through: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    for (i, v) in [count, after, through].into_iter().enumerate() {
        h[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    h
}

/// Merges neighbouring runs into one run of their whole seq range; `None` when stopped.
fn merge(dir: &Path, runs: &[Arc<Run>], stop: &AtomicBool) -> std::io::Result<Option<Run>> {
    let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
        return Ok(None);
    };
    let count = runs.iter().map(|r| r.count).sum();
    let mut readers = runs
        .iter()
        .map(|r| RunReader::new(r.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut heads = readers
        .iter_mut()
        .map(|r| r.next())
        .collect::<Result<Vec<_>, _>>()?;
    let written = (|| {
        let mut w = RunWriter::create(dir, first.after, last.through, count)?;
        loop {
            let Some((i, e)) = heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.map(|e| (i, e)))
                .min_by_key(|(_, e)| *e)
            else {
                return w.finish();
            };
            w.push(e, stop)?;
            heads[i] = readers[i].next()?;
        }
    })();
    match written {
        Ok(run) => Ok(Some(run)),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted && stop.load(Ordering::Acquire) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The runs in `dir` that chain from seq 0, each intact; leftovers (temporary files, runs
/// an interrupted merge replaced, damaged runs and those after them) are removed, and
/// their events are read back from SQLite.
fn load_chain(dir: &Path) -> std::io::Result<Vec<Arc<Run>>> {
    let mut found: Vec<(u64, u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match parse_name(name) {
            Some((a, t)) if a < t => found.push((a, t, path)),
            _ => {
                if name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
    // Longest first among runs that start at the same seq (a merge's output before its
    // inputs were removed).
    found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut chain: Vec<Arc<Run>> = Vec::new();
    let mut at = 0u64;
    let mut used = vec![false; found.len()];
    loop {
        let mut next = None;
        for (i, (a, _, path)) in found.iter().enumerate() {
            if *a != at || used[i] {
                continue;
            }
            used[i] = true;
            match Run::load(path) {
                Ok(run) => {
                    next = Some(run);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a run of duplicate keys is damaged; its events' keys are read back from SQLite")
                }
            }
        }
        match next {
            Some(run) => {
                at = run.through;
                chain.push(Arc::new(run));
            }
            None => break,
        }
    }
    for (i, (_, _, path)) in found.iter().enumerate() {
        if !chain.iter().any(|r| &r.path == path) {
            tracing::info!(path = %path.display(), tried = used[i], "removing a run of duplicate keys outside the chain");
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(chain)
}

/// A blocked Bloom filter: each key sets 7 bits in one 512-bit block (one cache line).
struct Bloom {
    blocks: Vec<[u64; 8]>,
}

impl Bloom {
    fn new(keys: usize) -> Bloom {
        let n = (keys * BLOOM_BITS_PER_KEY).div_ceil(512).max(1);
        Bloom {
            blocks: vec![[0u64; 8]; n],
        }
    }

    fn at(&self, key: u64) -> (usize, u64) {
        // Keys are already hashes: the block from the high bits, the bits from a remix.
        let block = ((key as u128 * self.blocks.len() as u128) >> 64) as usize;
        (block, key.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn add(&mut self, key: u64) {
        let (b, mut h) = self.at(key);
        let block = &mut self.blocks[b];
        for _ in 0..7 {
            let bit = (h & 511) as usize;
            block[bit / 64] |= 1 << (bit % 64);
            h >>= 9;
        }
    }

    fn may_hold(&self, key: u64) -> bool {
        let (b, mut h) = self.at(key);
        let block = &self.blocks[b];
        for _ in 0..7 {
            let bit = (h & 511) as usize;
            if block[bit / 64] & (1 << (bit % 64)) == 0 {
                return false;
            }
            h >>= 9;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys in memory before a run, in these tests.
    const RECENT_MAX: usize = 100;

    /// Keys spread like hashes (a fixed sequence, so failures repeat).
    fn key(i: u64) -> u64 {
        herald_core::event::dedup_key("/k", &i.to_string()) as u64
    }

    fn found(index: &DedupIndex, k: u64) -> Vec<u64> {
        let mut out = Vec::new();
        index.candidates(k, &mut out).expect("candidates");
        out.sort_unstable();
        out
    }

    /// A run finds every seq of a key, also when they run over several blocks, and nothing
    /// for an absent key; a changed byte or a cut file is refused at load.
    #[test]
    fn a_run_finds_its_keys_and_refuses_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut entries: Vec<(u64, u64)> = (1..=5000).map(|s| (key(s), s)).collect();
        // One key with 700 seqs (hash collisions, in theory): they span three blocks.
        let many = key(1234);
        entries.extend((6000..6700).map(|s| (many, s)));
        entries.sort_unstable();
        let stop = AtomicBool::new(false);
        let written = Run::write(dir.path(), 0, 6700, &entries, &stop).expect("write");
        let loaded = Run::load(&written.path).expect("load");
        for run in [&written, &loaded] {
            for s in (1..=5000).step_by(7) {
                let mut out = Vec::new();
                run.find(key(s), &mut out).expect("find");
                if key(s) == many {
                    assert_eq!(out.len(), 701);
                } else {
                    assert_eq!(out, [s], "seq {s}");
                }
            }
            let mut out = Vec::new();
            run.find(many, &mut out).expect("find");
            out.sort_unstable();
            let mut want: Vec<u64> = (6000..6700).collect();
            want.push(1234);
            want.sort_unstable();
            assert_eq!(out, want);
            for s in 10_000..12_000 {
                let mut out = Vec::new();
                run.find(key(s), &mut out).expect("find");
                assert!(out.is_empty(), "absent key {s} found {out:?}");
            }
        }
        let bytes = std::fs::read(&written.path).expect("read");
        let mut changed = bytes.clone();
        changed[HEADER + 16 * 77 + 3] ^= 1;
        std::fs::write(&written.path, &changed).expect("write");
        assert!(Run::load(&written.path).is_err(), "a changed byte is found");
        std::fs::write(&written.path, &bytes[..bytes.len() - 20]).expect("write");
        assert!(Run::load(&written.path).is_err(), "a cut file is found");
        // A count whose high bit changed: its length check wraps without checked
        // arithmetic, and sizing the index by it would ask for petabytes.
        let mut changed = bytes.clone();
        changed[15] ^= 0x80;
        std::fs::write(&written.path, &changed).expect("write");
        assert!(
            Run::load(&written.path).is_err(),
            "a changed count is found"
        );
        // The CRC covers the header: a changed header field that still matches the length.
        std::fs::write(&written.path, &bytes).expect("write");
        let run = Run::load(&written.path).expect("intact again");
        let mut changed = bytes.clone();
        changed[HEADER + 16 * 5000 + 12] ^= 1;
        std::fs::write(&written.path, &changed).expect("write");
        // A merge reads its inputs as loading does: a run changed since it was loaded is
        // not copied into a new one under a valid CRC.
        let other = Run::write(dir.path(), 6700, 6701, &[(1, 6701)], &stop).expect("write");
        let err = merge(dir.path(), &[Arc::new(run), Arc::new(other)], &stop)
            .err()
            .expect("the merge fails");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(
            !dir.path().join(run_name(0, 6701)).exists()
                && !dir
                    .path()
                    .join(run_name(0, 6701))
                    .with_extension("tmp")
                    .exists(),
            "nothing left behind"
        );
    }

    /// A test database with the two columns the index reads back.
    fn events_db(rows: impl Iterator<Item = (u64, u64)>) -> Connection {
        let c = Connection::open_in_memory().expect("open");
        c.execute_batch("CREATE TABLE events (seq INTEGER PRIMARY KEY, dkey INTEGER NOT NULL)")
            .expect("table");
        let mut ins = c
            .prepare("INSERT INTO events VALUES (?1, ?2)")
            .expect("insert");
        for (s, k) in rows {
            ins.execute([s as i64, k as i64]).expect("row");
        }
        drop(ins);
        c
    }

    /// Waits until the builder has written the frozen keys and done the merges due.
    fn settle(index: &DedupIndex) {
        for _ in 0..1000 {
            let st = index.shared.read();
            if st.frozen.is_none() && due_merge(&st.runs, RECENT_MAX).is_none() {
                return;
            }
            drop(st);
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the builder did not settle");
    }

    /// Keys go to memory, then to runs that are merged four at a time, and are found
    /// throughout; after a restart they are found from the runs and SQLite; a lost run, a
    /// damaged one, runs past the newest event, leftovers of an interrupted merge are all
    /// dealt with by reading the keys back from SQLite.
    #[test]
    fn keys_are_found_in_memory_in_runs_and_after_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dedup");
        let n = (RECENT_MAX * 10 + 7) as u64;
        let empty = events_db(std::iter::empty());
        let index = DedupIndex::open(&path, &empty, 0, RECENT_MAX).expect("open");
        let mut seq = 0u64;
        while seq < n {
            let group: Vec<(u64, u64)> =
                (seq + 1..=(seq + 37).min(n)).map(|s| (key(s), s)).collect();
            seq += group.len() as u64;
            index.insert(&group, seq);
            // One run at a time, so that their sizes are known.
            settle(&index);
            // Found at once, wherever they are.
            for (k, s) in &group {
                assert_eq!(found(&index, *k), [*s]);
            }
        }
        settle(&index);
        let (runs, in_memory) = index.shape();
        // 9 runs of 111 keys written; 8 of them merged into two.
        assert_eq!(runs, 3, "runs merged");
        assert!(in_memory < RECENT_MAX, "{in_memory} keys in memory");
        for s in 1..=n {
            assert_eq!(found(&index, key(s)), [s], "seq {s}");
        }
        for s in n + 1..n + 2000 {
            assert!(found(&index, key(s)).is_empty());
        }
        index.stop();
        drop(index);

        let db = events_db((1..=n).map(|s| (s, key(s))));
        let check = |index: &DedupIndex| {
            for s in 1..=n {
                assert_eq!(found(index, key(s)), [s], "seq {s}");
            }
        };
        let index = DedupIndex::open(&path, &db, n, RECENT_MAX).expect("reopen");
        check(&index);
        assert_eq!(index.shape().0, 3, "the runs are used again");
        drop(index);

        // An interrupted merge's output beside its inputs, and a temporary file: the longest
        // is kept and the rest removed.
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        let (a0, t0) = parse_name(&names[0]).expect("name");
        let (_, t1) = parse_name(&names[1]).expect("name");
        let halves: Vec<(u64, u64)> = (1..=t0).map(|s| (key(s), s)).collect();
        let mut sorted = halves.clone();
        sorted.sort_unstable();
        let stop = AtomicBool::new(false);
        // A run of the first half of run 0's range, as if its merge was not yet done.
        let mut first: Vec<(u64, u64)> = halves[..halves.len() / 2].to_vec();
        first.sort_unstable();
        Run::write(&path, a0, t0 / 2, &first, &stop).expect("write");
        std::fs::write(path.join("run-x.tmp"), b"partial").expect("tmp");
        let index = DedupIndex::open(&path, &db, n, RECENT_MAX).expect("reopen");
        check(&index);
        assert_eq!(index.shape().0, 3);
        assert!(!path.join("run-x.tmp").exists());
        assert!(!path.join(run_name(a0, t0 / 2)).exists());
        drop(index);

        // Run 1 lost, run 2 damaged: their keys come back from SQLite.
        std::fs::remove_file(path.join(&names[1])).expect("remove");
        let last = path.join(&names[2]);
        let mut bytes = std::fs::read(&last).expect("read");
        bytes[HEADER + 5] ^= 0x40;
        std::fs::write(&last, &bytes).expect("write");
        let index = DedupIndex::open(&path, &db, n, RECENT_MAX).expect("reopen");
        check(&index);
        assert!(index.shape().0 >= 2, "runs written from SQLite");
        drop(index);

        // Runs past the newest stored event (of another history, or of seqs handed out to
        // groups that failed) are dropped: their seqs will be handed out again.
        let db = events_db((1..=t1).map(|s| (s, key(s))));
        let index = DedupIndex::open(&path, &db, t1, RECENT_MAX).expect("reopen");
        for s in 1..=t1 {
            assert_eq!(found(&index, key(s)), [s], "seq {s}");
        }
        assert!(index.shape().0 >= 1);
        let after = index.shared.read().recent_after;
        assert!(after <= t1, "{after} > {t1}");
        for s in t1 + 1..=n {
            assert!(
                found(&index, key(s)).is_empty(),
                "seq {s} is from the dropped runs"
            );
        }
    }

    /// Four neighbours of a class are merged; so are smaller runs left before a larger one
    /// (they would never find four of their class after it); a larger run before smaller
    /// ones waits for them.
    #[test]
    fn merges_are_due_for_four_of_a_class_or_smaller_before_larger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stop = AtomicBool::new(false);
        let mut at = 0u64;
        let mut runs_of = |counts: &[u64]| -> Vec<Arc<Run>> {
            counts
                .iter()
                .map(|&c| {
                    let mut e: Vec<(u64, u64)> = (at + 1..=at + c).map(|s| (key(s), s)).collect();
                    e.sort_unstable();
                    let run = Run::write(dir.path(), at, at + c, &e, &stop).expect("write");
                    at += c;
                    Arc::new(run)
                })
                .collect()
        };
        let r = RECENT_MAX as u64;
        assert_eq!(due_merge(&runs_of(&[r, r, r, r]), RECENT_MAX), Some(0));
        assert_eq!(due_merge(&runs_of(&[r, r, r, 5 * r]), RECENT_MAX), Some(0));
        assert_eq!(
            due_merge(&runs_of(&[16 * r, 4 * r, 4 * r, 4 * r]), RECENT_MAX),
            None
        );
        assert_eq!(
            due_merge(&runs_of(&[16 * r, 4 * r, r, r, r, r]), RECENT_MAX),
            Some(2)
        );
        assert_eq!(due_merge(&runs_of(&[4 * r, r, r]), RECENT_MAX), None);
    }

    #[test]
    fn size_classes_merge_four_neighbours_of_a_class() {
        let r = RECENT_MAX as u64;
        assert_eq!(class(1, RECENT_MAX), 0);
        assert_eq!(class(3 * r, RECENT_MAX), 0);
        assert_eq!(class(4 * r, RECENT_MAX), 1);
        assert_eq!(class(16 * r, RECENT_MAX), 2);
    }
}
