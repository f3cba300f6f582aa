//! CPU time by thread of this process, from `/proc/self/task` (Linux), so that the
//! benchmarks can say where the time goes: per stored event, for each of the store's threads,
//! the HTTP server and the in-process load generator. Elsewhere it reports nothing.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// CPU seconds and role (see [`role`]) of each live thread of this process, by thread id,
/// and under [`PROCESS`] the whole process's (which includes the threads that ended).
pub type Snapshot = HashMap<u32, (&'static str, f64)>;

/// The key of the whole process in a [`Snapshot`] (no thread has id 0).
const PROCESS: u32 = 0;

/// utime + stime in seconds from the text of a `stat` file of `/proc`.
fn stat_secs(stat: &str) -> Option<f64> {
    let close = stat.rfind(')')?;
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // proc(5): after the name come the state (field 3) ... utime and stime (fields 14 and
    // 15), in clock ticks of USER_HZ, which the kernel fixes at 100 for /proc.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((ticks(11) + ticks(12)) as f64 / 100.0)
}

/// The CPU time of every live thread of this process (empty where `/proc` is missing).
pub fn snapshot() -> Snapshot {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    if let Some(secs) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_secs(&s))
    {
        out.insert(PROCESS, ("process", secs));
    }
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close), Some(secs)) =
            (stat.find('('), stat.rfind(')'), stat_secs(&stat))
        else {
            continue;
        };
        out.insert(tid, (role(&stat[open + 1..close]), secs));
    }
    out
}

/// CPU seconds spent by role between two snapshots, counting each thread against itself:
/// a thread that started meanwhile counts from zero. A thread that ended (the short-lived
/// thread that prepares each next event segment, for one) is not among them: what the
/// process spent beyond its live threads is counted as `ended threads` (give or take the
/// 10 ms ticks of each thread's count).
pub fn spent(before: &Snapshot, after: &Snapshot) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    let mut live = 0.0;
    for (tid, (role, secs)) in after {
        if *tid == PROCESS {
            continue;
        }
        let was = before.get(tid).map_or(0.0, |b| b.1);
        let d = (secs - was).max(0.0);
        live += d;
        *out.entry(*role).or_insert(0.0) += d;
    }
    if let (Some(b), Some(a)) = (before.get(&PROCESS), after.get(&PROCESS)) {
        let ended = a.1 - b.1 - live;
        if ended > 0.0 {
            out.insert("ended threads", ended);
        }
    }
    out
}

/// The role of a thread, from its name (Linux keeps the first 15 bytes).
fn role(name: &str) -> &'static str {
    match name {
        "herald-indexer" => "indexer",
        "herald-fulltext" => "full-text",
        "herald-writer" => "writer",
        "herald-segment" => "segments",
        "herald-checkpoi" => "checkpoints",
        "herald-server" => "HTTP server",
        // The load generator's runtime keeps tokio's default thread name
        // (`tokio-rt-worker`, `tokio-runtime-worker` in older versions).
        n if n.starts_with("tokio-r") => "load generator",
        _ => "other",
    }
}

/// Waits until the full-text thread has been idle for half a second (it indexes in the
/// background after the events are queryable), at most `max`, so that its CPU is counted
/// with the load that caused it.
pub fn wait_for_fulltext_idle(max: Duration) {
    let fulltext = || -> f64 {
        snapshot()
            .values()
            .filter(|(role, _)| *role == "full-text")
            .map(|(_, secs)| secs)
            .sum()
    };
    let start = Instant::now();
    let mut last = fulltext();
    let mut still = 0;
    while still < 2 && start.elapsed() < max {
        std::thread::sleep(Duration::from_millis(250));
        let now = fulltext();
        still = if now > last { 0 } else { still + 1 };
        last = now;
    }
}

/// One line: CPU microseconds per event by role between two snapshots, largest first, the
/// total, and the rate that total allows on this machine's cores.
pub fn per_event_line(before: &Snapshot, after: &Snapshot, events: usize) -> Option<String> {
    if events == 0 || after.is_empty() {
        return None;
    }
    let mut parts: Vec<(&str, f64)> = spent(before, after)
        .into_iter()
        .map(|(role, secs)| (role, secs * 1e6 / events as f64))
        .filter(|(_, us)| *us >= 0.05)
        .collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = parts.iter().map(|p| p.1).sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let list: Vec<String> = parts
        .iter()
        .map(|(role, us)| format!("{role} {us:.1}"))
        .collect();
    Some(format!(
        "CPU µs per event: {}; total {total:.1} µs, at most {:.0} events/s on {cores} cores",
        list.join(", "),
        cores as f64 * 1e6 / total.max(0.001)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps this thread busy for `d`.
    fn burn(d: Duration) {
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < d {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
    }

    #[test]
    fn this_threads_cpu_is_counted_and_split_per_event() {
        let before = snapshot();
        if before.is_empty() {
            return; // not Linux
        }
        // Burn a little CPU on a thread of a known role.
        std::thread::Builder::new()
            .name("herald-indexer".into())
            .spawn(|| {
                burn(Duration::from_millis(300));
                // Stay alive until the snapshot below is taken.
                std::thread::sleep(Duration::from_millis(400));
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(350));
        let after = snapshot();
        let by_role = spent(&before, &after);
        let indexer = by_role.get("indexer").copied().unwrap_or(0.0);
        assert!(indexer >= 0.1, "indexer spent {indexer} s");
        // A thread that has ended is missing from `after`: it takes nothing away.
        let mut gone = before.clone();
        gone.insert(u32::MAX, ("indexer", 1000.0));
        assert_eq!(spent(&gone, &after).get("indexer"), by_role.get("indexer"));
        let line = per_event_line(&before, &after, 1000).unwrap();
        // (Other tests' threads that end meanwhile count too, as `ended threads`.)
        assert!(line.starts_with("CPU µs per event: "), "{line}");
        assert!(line.contains("indexer "), "{line}");
        assert!(line.contains("events/s on"), "{line}");
        // What a thread that ended spent is counted from the process's total.
        let before = snapshot();
        std::thread::Builder::new()
            .name("herald-segment".into())
            .spawn(|| burn(Duration::from_millis(300)))
            .unwrap()
            .join()
            .unwrap();
        let by_role = spent(&before, &snapshot());
        let ended = by_role.get("ended threads").copied().unwrap_or(0.0);
        assert!(ended >= 0.2, "ended threads spent {ended} s: {by_role:?}");
        assert!(!by_role.contains_key("segments"), "{by_role:?}");
    }
}
