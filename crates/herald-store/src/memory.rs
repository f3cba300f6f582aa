//! Where SQLite takes its memory from. Left alone, SQLite allocates through the C library's
//! `malloc` and counts every allocation in statistics kept under one process-wide mutex; the
//! full-text and indexer threads allocate on almost every token and row they write (FTS5's
//! hash entries, cursors, records), so both threads paid for glibc's arenas and that mutex.
//! [`configure`] turns the statistics off (Herald reads none of them) and hands SQLite's
//! allocations to mimalloc, the allocator the rest of the process uses.

use rusqlite::ffi;
use std::os::raw::{c_int, c_void};

/// Configures SQLite's memory before its first use in the process (the first connection
/// opened initializes SQLite, after which its configuration is fixed). Called later, it
/// changes nothing and says so (`false`): SQLite then goes on with the C library's `malloc`.
pub fn configure() -> bool {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(sqlite_malloc),
        xFree: Some(sqlite_free),
        xRealloc: Some(sqlite_realloc),
        xSize: Some(sqlite_size),
        xRoundup: Some(sqlite_roundup),
        xInit: Some(sqlite_init),
        xShutdown: Some(sqlite_shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: `sqlite3_config` is called with the argument types each option documents (an
    // int for MEMSTATUS, a pointer to a filled `sqlite3_mem_methods` for MALLOC, which SQLite
    // copies before it returns). Before SQLite is initialized no other thread is inside it;
    // after, both calls return SQLITE_MISUSE and change nothing.
    unsafe {
        ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int) == ffi::SQLITE_OK
            && ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_MALLOC,
                &methods as *const ffi::sqlite3_mem_methods,
            ) == ffi::SQLITE_OK
    }
}

// SQLite asks for 8-byte alignment; mimalloc gives at least that to every block.

unsafe extern "C" fn sqlite_malloc(n: c_int) -> *mut c_void {
    // SAFETY: any size may be asked of mi_malloc; SQLite never asks for a negative one.
    unsafe { libmimalloc_sys::mi_malloc(n.max(0) as usize) }
}

unsafe extern "C" fn sqlite_free(p: *mut c_void) {
    // SAFETY: SQLite frees only what `sqlite_malloc`/`sqlite_realloc` returned (or NULL).
    unsafe { libmimalloc_sys::mi_free(p) }
}

unsafe extern "C" fn sqlite_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    // SAFETY: `p` came from this allocator (SQLite never reallocates others' blocks).
    unsafe { libmimalloc_sys::mi_realloc(p, n.max(0) as usize) }
}

unsafe extern "C" fn sqlite_size(p: *mut c_void) -> c_int {
    // SAFETY: as for `sqlite_free`.
    let size = unsafe { libmimalloc_sys::mi_usable_size(p) };
    c_int::try_from(size).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn sqlite_roundup(n: c_int) -> c_int {
    // What a block of `n` bytes really holds, so that SQLite can use all of it.
    // SAFETY: a pure function of its argument.
    let good = unsafe { libmimalloc_sys::mi_good_size(n.max(0) as usize) };
    c_int::try_from(good).unwrap_or(n)
}

unsafe extern "C" fn sqlite_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn sqlite_shutdown(_: *mut c_void) {}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_allocates_through_mimalloc_once_configured() {
        // Tests in this binary run in threads of one process, and some may have opened a
        // connection already: run the check in a process of its own.
        if std::env::var_os("HERALD_MEMORY_TEST_CHILD").is_none() {
            let exe = std::env::current_exe().unwrap();
            let out = std::process::Command::new(exe)
                .args([
                    "--exact",
                    "memory::tests::sqlite_allocates_through_mimalloc_once_configured",
                    "--nocapture",
                ])
                .env("HERALD_MEMORY_TEST_CHILD", "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "{text}");
            return;
        }
        assert!(super::configure(), "the first call configures SQLite");
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE VIRTUAL TABLE t USING fts5(x); INSERT INTO t VALUES ('some words to index');",
        )
        .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t WHERE t MATCH 'words'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1);
        // Statistics are off: SQLite no longer counts what it holds.
        // SAFETY: a read of SQLite's counter, safe at any time.
        assert_eq!(unsafe { rusqlite::ffi::sqlite3_memory_used() }, 0);
        // Once SQLite is in use, its memory cannot change.
        assert!(!super::configure());
    }
}
