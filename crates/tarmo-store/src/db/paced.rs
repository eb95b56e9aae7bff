//! A pass-through SQLite VFS whose database files write behind: every
//! [`CHUNK`] bytes written, what was written is handed to the disk
//! (`sync_file_range` WRITE) and the chunk before it is waited for. The
//! checkpointer's connection alone opens the database through it.
//!
//! Why: a checkpoint copies the log's pages into the database file as
//! fast as the page cache takes them, then fsyncs the file: right after an
//! ingest burst that is tens to hundreds of MB queued at the disk at once,
//! and every small flush beside it (a lookup's access-log record, a
//! consent write's group) waits behind the queue. Measured with
//! `scripts/bench-flush-behind-copy`: 4 KiB flushes beside a 300 MiB
//! write-then-fsync have a p99 of 41-48 ms; beside the same copy written
//! behind in 4 MiB chunks, 3.2 ms. The copy's fsync then finds little
//! left to write. Nothing about durability changes: the checkpoint still
//! syncs the database before the log may be written over, as before;
//! `sync_file_range` is a hint about *when* pages go, never a promise that
//! they went.
//!
//! A second VFS, [`log_name`], under every other connection
//! (`SqliteBackend::connect`), gathers a commit's log frames into one
//! write. SQLite writes each frame's 24-byte header and its page apart,
//! two system calls a page: a single consent write's commit (~15 pages)
//! made ~30 `pwrite`s, 21 % of the writer's time (`perf`). Gathered,
//! they are written when the commit frame's page is in, before SQLite
//! publishes the commit to other connections, and before anything else
//! touches the file; see `log_write`.
//!
//! Both are the platform's default VFS ("unix") with `xOpen` replaced:
//! the file they change (the database file for the first, the log for the
//! second) is opened by the default VFS into the tail of a larger file
//! structure whose methods forward to it, all but `xWrite`, `xSync` and
//! `xClose` unchanged (and, for a log, whatever was gathered written
//! first). Every other file is the default VFS's own. Linux only;
//! elsewhere [`name`] and [`log_name`] answer `None` and connections use
//! the default.

/// Hand the disk this much at a time (and wait for the chunk before).
pub const CHUNK: i64 = 4 << 20;

/// How many chunks were handed to the disk by this thread (a connection's
/// files are written by the thread that runs its statement).
pub fn chunks_handed_here() -> u64 {
    imp::HANDED_HERE.with(|c| c.get())
}

/// Writes to log files on this thread through [`log_name`]'s VFS: (asked
/// for by SQLite, made to the files).
pub fn log_writes_here() -> (u64, u64) {
    imp::LOG_WRITES_HERE.with(|c| c.get())
}

/// The VFS's name once registered (the first call registers it), or
/// `None` where it is not available.
pub fn name() -> Option<&'static str> {
    imp::register()
}

/// The VFS whose log files gather a commit's appends into one write (the
/// default VFS writes each frame's header and page apart: two system calls
/// a page); `None` where it is not available.
pub fn log_name() -> Option<&'static str> {
    imp::register().map(|_| "tarmo-log")
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::ffi::{CStr, c_char, c_int, c_void};
    use std::sync::OnceLock;

    use rusqlite::ffi;

    use super::CHUNK;

    thread_local! {
        pub static HANDED_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        /// Writes a log file took on this thread: asked for by SQLite, and
        /// made to the file.
        pub static LOG_WRITES_HERE: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }

    fn count_log_write(asked: u64, made: u64) {
        LOG_WRITES_HERE.with(|c| {
            let (a, m) = c.get();
            c.set((a + asked, m + made));
        });
    }

    const NAME: &CStr = c"tarmo-paced";
    const LOG_NAME: &CStr = c"tarmo-log";

    /// The default VFS (what every call is forwarded to) and ours.
    struct Vfs {
        real: *mut ffi::sqlite3_vfs,
    }
    // Both point to structures that live as long as the process (the
    // default VFS is SQLite's static; ours is leaked), never written after
    // registration.
    unsafe impl Send for Vfs {}
    unsafe impl Sync for Vfs {}

    static VFS: OnceLock<Option<Vfs>> = OnceLock::new();

    /// A wrapped file (a main database file written behind, or a log
    /// gathered): our state, then (at [`real_of`]) the default VFS's file
    /// structure.
    #[repr(C)]
    struct Paced {
        base: ffi::sqlite3_file,
        /// Our own read-only descriptor of the file: `sync_file_range`
        /// works on the file's pages through any descriptor.
        fd: c_int,
        /// Written since the last hand-off: bytes, and the range.
        pending: i64,
        lo: i64,
        hi: i64,
        /// Handed to the disk, not yet waited for (`prev_hi == 0`: none).
        prev_lo: i64,
        prev_hi: i64,
        /// A log file: its appends gathered here (starting at file offset
        /// `start`) and written at the end of a commit.
        log: bool,
        buf: Vec<u8>,
        start: i64,
        /// Where the last write ended: only a write starting there is
        /// gathered.
        last_end: i64,
        /// The last write was a commit frame's header: its page, next, ends
        /// the commit.
        commit_next: bool,
        /// The transaction outgrew [`GATHER`]: written through to its end.
        through: bool,
    }

    /// Gather at most this much of a log before writing it.
    const GATHER: usize = 1 << 20;
    /// What the default VFS takes in one write: less than 128 KiB.
    const PIECE: usize = 124 << 10;

    const HEAD: usize = std::mem::size_of::<Paced>().next_multiple_of(16);

    unsafe fn real_of(f: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
        unsafe { (f as *mut u8).add(HEAD) as *mut ffi::sqlite3_file }
    }

    unsafe fn real_methods(f: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
        unsafe { &*(*real_of(f)).pMethods }
    }

    pub fn register() -> Option<&'static str> {
        VFS.get_or_init(|| unsafe {
            if ffi::sqlite3_initialize() != ffi::SQLITE_OK {
                return None;
            }
            let real = ffi::sqlite3_vfs_find(std::ptr::null());
            if real.is_null() || (*real).iVersion < 2 {
                return None;
            }
            // A copy of the default: its other methods ignore which VFS
            // structure they are called through, or read only fields the
            // copy keeps (`mxPathname`, `pAppData`).
            let mut ours: ffi::sqlite3_vfs = std::ptr::read(real);
            ours.szOsFile = (*real).szOsFile + HEAD as c_int;
            ours.zName = NAME.as_ptr();
            ours.pNext = std::ptr::null_mut();
            ours.xOpen = Some(x_open::<false>);
            let mut log = ours;
            log.zName = LOG_NAME.as_ptr();
            log.xOpen = Some(x_open::<true>);
            for v in [ours, log] {
                if ffi::sqlite3_vfs_register(Box::leak(Box::new(v)), 0) != ffi::SQLITE_OK {
                    return None;
                }
            }
            Some(Vfs { real })
        })
        .as_ref()
        .map(|_| NAME.to_str().expect("ascii"))
    }

    fn real_vfs() -> *mut ffi::sqlite3_vfs {
        VFS.get()
            .and_then(|v| v.as_ref())
            .map(|v| v.real)
            .expect("registered before use")
    }

    /// `xOpen` of both VFSes: `LOG` wraps the log files (gathered), else
    /// the main database files (written behind).
    unsafe extern "C" fn x_open<const LOG: bool>(
        _vfs: *mut ffi::sqlite3_vfs,
        name: *const c_char,
        file: *mut ffi::sqlite3_file,
        flags: c_int,
        out_flags: *mut c_int,
    ) -> c_int {
        let log = LOG;
        unsafe {
            let real = real_vfs();
            let open = (*real).xOpen.expect("xOpen");
            let wanted = if log {
                ffi::SQLITE_OPEN_WAL
            } else {
                ffi::SQLITE_OPEN_MAIN_DB
            };
            if flags & wanted == 0 || name.is_null() {
                // Not a database file: the default's own structure, at the
                // start of ours (the spare bytes at the end go unused).
                return open(real, name, file, flags, out_flags);
            }
            let p = file as *mut Paced;
            std::ptr::write(
                p,
                Paced {
                    base: ffi::sqlite3_file {
                        pMethods: std::ptr::null(),
                    },
                    fd: -1,
                    pending: 0,
                    lo: i64::MAX,
                    hi: 0,
                    prev_lo: 0,
                    prev_hi: 0,
                    log,
                    buf: Vec::new(),
                    start: 0,
                    last_end: -1,
                    commit_next: false,
                    through: false,
                },
            );
            let inner = real_of(file);
            (*inner).pMethods = std::ptr::null();
            let rc = open(real, name, inner, flags, out_flags);
            if (*inner).pMethods.is_null() {
                std::ptr::drop_in_place(p);
                return rc;
            }
            if !log {
                (*p).fd = libc::open(name, libc::O_RDONLY | libc::O_CLOEXEC);
            }
            (*p).base.pMethods = &METHODS;
            rc
        }
    }

    unsafe extern "C" fn x_write(
        f: *mut ffi::sqlite3_file,
        buf: *const c_void,
        amt: c_int,
        off: i64,
    ) -> c_int {
        unsafe {
            if (*(f as *mut Paced)).log {
                return log_write(f, buf, amt, off);
            }
            let rc = (real_methods(f).xWrite.expect("xWrite"))(real_of(f), buf, amt, off);
            let p = &mut *(f as *mut Paced);
            if rc != ffi::SQLITE_OK || p.fd < 0 {
                return rc;
            }
            p.lo = p.lo.min(off);
            p.hi = p.hi.max(off + amt as i64);
            p.pending += amt as i64;
            if p.pending >= CHUNK {
                // A hint: failures show at the checkpoint's own fsync.
                libc::sync_file_range(p.fd, p.lo, p.hi - p.lo, libc::SYNC_FILE_RANGE_WRITE);
                if p.prev_hi > 0 {
                    libc::sync_file_range(
                        p.fd,
                        p.prev_lo,
                        p.prev_hi - p.prev_lo,
                        libc::SYNC_FILE_RANGE_WAIT_BEFORE
                            | libc::SYNC_FILE_RANGE_WRITE
                            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                    );
                }
                HANDED_HERE.with(|c| c.set(c.get() + 1));
                (p.prev_lo, p.prev_hi) = (p.lo, p.hi);
                (p.lo, p.hi, p.pending) = (i64::MAX, 0, 0);
            }
            rc
        }
    }

    /// Write what a log file gathered.
    unsafe fn gathered(f: *mut ffi::sqlite3_file) -> c_int {
        unsafe {
            let p = &mut *(f as *mut Paced);
            if p.buf.is_empty() {
                return ffi::SQLITE_OK;
            }
            // The default VFS writes less than 128 KiB a call.
            let mut rc = ffi::SQLITE_OK;
            let mut at = 0;
            while at < p.buf.len() && rc == ffi::SQLITE_OK {
                let n = (p.buf.len() - at).min(PIECE);
                rc = (real_methods(f).xWrite.expect("xWrite"))(
                    real_of(f),
                    p.buf[at..].as_ptr() as *const c_void,
                    n as c_int,
                    p.start + at as i64,
                );
                count_log_write(0, 1);
                at += n;
            }
            p.buf.clear();
            if p.buf.capacity() > GATHER {
                p.buf.shrink_to(GATHER);
            }
            rc
        }
    }

    /// A log's write: an append right after the last write is gathered, and
    /// what was gathered is written once the commit frame's page is in (a
    /// frame's 24-byte header whose "database size" field is not zero
    /// marks the commit: SQLite's WAL format), or before anything else
    /// touches the file. So a commit is whole in the file before SQLite
    /// publishes it in the shared index, and a commit that fails to write
    /// fails its transaction, as it would have. A transaction that
    /// outgrows [`GATHER`] (an ingest group: megabytes) is written through
    /// from there to its commit, as SQLite writes it: gathering is for the
    /// many small commits.
    unsafe fn log_write(
        f: *mut ffi::sqlite3_file,
        data: *const c_void,
        amt: c_int,
        off: i64,
    ) -> c_int {
        unsafe {
            count_log_write(1, 0);
            let bytes = std::slice::from_raw_parts(data as *const u8, amt as usize);
            let commit_header = amt == 24 && bytes[4..8] != [0; 4];
            let p = &mut *(f as *mut Paced);
            let append = off == p.last_end;
            if !append || p.through {
                // Not an append (the log starting again, a frame written
                // over, checksums written again), or a large transaction:
                // write through.
                let rc = gathered(f);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                let p = &mut *(f as *mut Paced);
                let rc = (real_methods(f).xWrite.expect("xWrite"))(real_of(f), data, amt, off);
                count_log_write(0, 1);
                p.last_end = if rc == ffi::SQLITE_OK {
                    off + amt as i64
                } else {
                    -1
                };
                if p.commit_next {
                    // The commit's last page: the next transaction gathers.
                    p.through = false;
                }
                p.commit_next = commit_header;
                if commit_header && !append {
                    // A commit header written over: nothing gathered may
                    // follow it unwritten.
                    p.last_end = -1;
                }
                return rc;
            }
            if p.buf.is_empty() {
                p.start = off;
            }
            p.buf.extend_from_slice(bytes);
            p.last_end = off + amt as i64;
            let ends_commit = p.commit_next;
            p.commit_next = commit_header;
            if ends_commit || p.buf.len() >= GATHER {
                p.through = !ends_commit;
                let rc = gathered(f);
                if rc != ffi::SQLITE_OK {
                    (*(f as *mut Paced)).last_end = -1;
                }
                return rc;
            }
            ffi::SQLITE_OK
        }
    }

    unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
        unsafe {
            let rc = gathered(f);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let p = &mut *(f as *mut Paced);
            (p.lo, p.hi, p.pending, p.prev_lo, p.prev_hi) = (i64::MAX, 0, 0, 0, 0);
            (real_methods(f).xSync.expect("xSync"))(real_of(f), flags)
        }
    }

    unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
        unsafe {
            let written = gathered(f);
            let rc = (real_methods(f).xClose.expect("xClose"))(real_of(f));
            let p = f as *mut Paced;
            if (*p).fd >= 0 {
                libc::close((*p).fd);
            }
            std::ptr::drop_in_place(p);
            (*p).base.pMethods = std::ptr::null();
            if written != ffi::SQLITE_OK {
                written
            } else {
                rc
            }
        }
    }

    /// Forward a method to the default VFS's file, unchanged.
    macro_rules! forward {
        ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*), $missing:expr) => {
            unsafe extern "C" fn $name(f: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
                unsafe {
                    // Whatever a log gathered is in the file first.
                    let rc = gathered(f);
                    if rc != ffi::SQLITE_OK {
                        return rc;
                    }
                    match real_methods(f).$field {
                        Some(m) => m(real_of(f) $(, $arg)*),
                        None => $missing,
                    }
                }
            }
        };
    }

    forward!(x_read, xRead, (buf: *mut c_void, amt: c_int, off: i64), ffi::SQLITE_IOERR);
    forward!(x_truncate, xTruncate, (size: i64), ffi::SQLITE_IOERR);
    forward!(x_file_size, xFileSize, (size: *mut i64), ffi::SQLITE_IOERR);
    forward!(x_lock, xLock, (level: c_int), ffi::SQLITE_IOERR);
    forward!(x_unlock, xUnlock, (level: c_int), ffi::SQLITE_IOERR);
    forward!(x_check_reserved, xCheckReservedLock, (out: *mut c_int), ffi::SQLITE_IOERR);
    forward!(x_file_control, xFileControl, (op: c_int, arg: *mut c_void), ffi::SQLITE_NOTFOUND);
    /// The same for methods that answer something other than a status
    /// (or that a log file never gets): nothing written first.
    macro_rules! forward_plain {
        ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*), $missing:expr) => {
            unsafe extern "C" fn $name(f: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
                unsafe {
                    match real_methods(f).$field {
                        Some(m) => m(real_of(f) $(, $arg)*),
                        None => $missing,
                    }
                }
            }
        };
    }

    forward_plain!(x_sector_size, xSectorSize, (), 4096);
    forward_plain!(x_device, xDeviceCharacteristics, (), 0);
    forward_plain!(x_shm_map, xShmMap, (region: c_int, size: c_int, extend: c_int, out: *mut *mut c_void), ffi::SQLITE_IOERR);
    forward_plain!(x_shm_lock, xShmLock, (offset: c_int, n: c_int, flags: c_int), ffi::SQLITE_IOERR);
    forward_plain!(x_shm_unmap, xShmUnmap, (delete: c_int), ffi::SQLITE_OK);
    forward!(x_fetch, xFetch, (off: i64, amt: c_int, out: *mut *mut c_void), {
        // No memory map: SQLite reads with xRead instead.
        *out = std::ptr::null_mut();
        ffi::SQLITE_OK
    });
    forward_plain!(x_unfetch, xUnfetch, (off: i64, page: *mut c_void), ffi::SQLITE_OK);

    unsafe extern "C" fn x_shm_barrier(f: *mut ffi::sqlite3_file) {
        unsafe {
            if let Some(m) = real_methods(f).xShmBarrier {
                m(real_of(f))
            }
        }
    }

    static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
        iVersion: 3,
        xClose: Some(x_close),
        xRead: Some(x_read),
        xWrite: Some(x_write),
        xTruncate: Some(x_truncate),
        xSync: Some(x_sync),
        xFileSize: Some(x_file_size),
        xLock: Some(x_lock),
        xUnlock: Some(x_unlock),
        xCheckReservedLock: Some(x_check_reserved),
        xFileControl: Some(x_file_control),
        xSectorSize: Some(x_sector_size),
        xDeviceCharacteristics: Some(x_device),
        xShmMap: Some(x_shm_map),
        xShmLock: Some(x_shm_lock),
        xShmBarrier: Some(x_shm_barrier),
        xShmUnmap: Some(x_shm_unmap),
        xFetch: Some(x_fetch),
        xUnfetch: Some(x_unfetch),
    };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    thread_local! {
        pub static HANDED_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        pub static LOG_WRITES_HERE: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }

    pub fn register() -> Option<&'static str> {
        None
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use rusqlite::{Connection, OpenFlags};

    /// Row `i`'s bytes: distinct in every row and every part of a row, so
    /// that a page written to the wrong place or not at all shows.
    fn row(i: i64) -> Vec<u8> {
        (0..256 * 1024)
            .map(|j: i64| ((j * 31 + i * 977) ^ (j >> 7)) as u8)
            .collect()
    }

    /// A checkpoint through the paced VFS hands the database file to the
    /// disk a chunk at a time, and every page arrives: the database reads
    /// back whole through the default VFS, and so does the log's last
    /// write after a truncation.
    #[test]
    fn a_checkpoint_written_behind_keeps_every_page() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let w = Connection::open(&path).unwrap();
        w.pragma_update(None, "journal_mode", "WAL").unwrap();
        w.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        w.execute_batch("CREATE TABLE t (i INTEGER PRIMARY KEY, b BLOB NOT NULL)")
            .unwrap();
        // 24 MiB in 96 rows, over four transactions.
        for chunk in 0..4 {
            w.execute_batch("BEGIN").unwrap();
            for i in chunk * 24..(chunk + 1) * 24 {
                w.execute("INSERT INTO t (i, b) VALUES (?1, ?2)", (i, row(i)))
                    .unwrap();
            }
            w.execute_batch("COMMIT").unwrap();
        }
        let vfs = super::name().expect("the paced VFS registers on Linux");
        let c = Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), vfs).unwrap();
        let before = super::chunks_handed_here();
        let (busy, log, copied): (i64, i64, i64) = c
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((busy, log, copied), (0, 0, 0), "copied and truncated");
        let handed = super::chunks_handed_here() - before;
        assert!(
            handed >= 5,
            "24 MiB copied, {handed} chunks of 4 MiB handed to the disk"
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("t.db-wal"))
                .unwrap()
                .len(),
            0
        );
        // Reads through the paced connection, then a fresh one through the
        // default VFS once both are closed.
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 96);
        drop(c);
        drop(w);
        let r = Connection::open(&path).unwrap();
        let ok: String = r
            .query_row("PRAGMA integrity_check", [], |x| x.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let mut st = r.prepare("SELECT i, b FROM t ORDER BY i").unwrap();
        let rows: Vec<(i64, Vec<u8>)> = st
            .query_map([], |x| Ok((x.get(0)?, x.get(1)?)))
            .unwrap()
            .map(|x| x.unwrap())
            .collect();
        assert_eq!(rows.len(), 96);
        for (i, b) in rows {
            assert!(b == row(i), "row {i} reads back as written");
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod log_tests {
    use rusqlite::{Connection, OpenFlags};

    fn copy_as_crashed(dir: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for f in ["t.db", "t.db-wal"] {
            std::fs::copy(dir.join(f), to.join(f)).unwrap();
        }
    }

    /// Through the gathering VFS a log takes one write a commit instead of
    /// two a page, every commit is seen by another connection as soon as it
    /// returns, and a copy of the files taken while the writer is still
    /// open (as after kill -9) recovers every commit and nothing else:
    /// SQLite checks every frame's checksum when it reads a log again.
    #[test]
    fn a_gathered_log_holds_every_commit_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let vfs = super::log_name().expect("registers on Linux");
        let w = Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), vfs).unwrap();
        w.pragma_update(None, "journal_mode", "WAL").unwrap();
        w.pragma_update(None, "synchronous", "NORMAL").unwrap();
        w.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        // A small page cache, so that a large transaction spills frames
        // into the log before its commit.
        w.pragma_update(None, "cache_size", 20).unwrap();
        w.execute_batch(
            "CREATE TABLE t (i INTEGER PRIMARY KEY, k BLOB NOT NULL, b BLOB NOT NULL);
             CREATE INDEX t_k ON t(k);",
        )
        .unwrap();
        let r = Connection::open(&path).unwrap();
        let mut expected = 0i64;
        let mut next = 0i64;
        let row = |i: i64| -> (Vec<u8>, Vec<u8>) {
            let k = (i as u64)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .to_be_bytes()
                .to_vec();
            (k, vec![(i % 251) as u8; 300 + (i % 7) as usize * 100])
        };
        let put = |i: i64| {
            let (k, b) = row(i);
            w.execute("INSERT INTO t (i, k, b) VALUES (?1, ?2, ?3)", (i, k, b))
                .unwrap();
        };
        for round in 0..60i64 {
            let n = match round % 10 {
                0 => 3000, // ~1.5 MB: spills and passes the 1 MiB gather
                _ => 1 + round % 5,
            };
            w.execute_batch("BEGIN").unwrap();
            for _ in 0..n {
                put(next);
                next += 1;
            }
            if round % 7 == 3 {
                // A savepoint rolled back inside the transaction.
                w.execute_batch("SAVEPOINT s").unwrap();
                for j in 0..50 {
                    put(1_000_000 + j);
                }
                w.execute_batch("ROLLBACK TO s; RELEASE s").unwrap();
            }
            w.execute_batch("COMMIT").unwrap();
            expected += n;
            if round % 9 == 4 {
                // A transaction rolled back whole.
                w.execute_batch("BEGIN").unwrap();
                for j in 0..500 {
                    put(2_000_000 + j);
                }
                w.execute_batch("ROLLBACK").unwrap();
            }
            let seen: i64 = r
                .query_row("SELECT count(*) FROM t", [], |x| x.get(0))
                .unwrap();
            assert_eq!(
                seen, expected,
                "round {round}: another connection sees the commit"
            );
        }
        // The rounds above spill and write frames over (each written
        // through); commits that fit in the cache gather whole.
        w.pragma_update(None, "cache_size", 2000).unwrap();
        let before = super::log_writes_here();
        for _ in 0..20 {
            w.execute_batch("BEGIN").unwrap();
            for _ in 0..20 {
                put(next);
                next += 1;
            }
            w.execute_batch("COMMIT").unwrap();
            expected += 20;
        }
        let (asked, made) = super::log_writes_here();
        let (asked, made) = (asked - before.0, made - before.1);
        assert!(
            made * 4 < asked,
            "{asked} writes asked for, {made} made: gathered"
        );
        // As after kill -9: the files as they are, the writer still open.
        let crashed = dir.path().join("crashed");
        copy_as_crashed(dir.path(), &crashed);
        let c = Connection::open(crashed.join("t.db")).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |x| x.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let (n, max): (i64, i64) = c
            .query_row("SELECT count(*), max(i) FROM t", [], |x| {
                Ok((x.get(0)?, x.get(1)?))
            })
            .unwrap();
        assert_eq!(
            (n, max),
            (expected, next - 1),
            "every commit recovered, nothing rolled back"
        );
        let mut st = c.prepare("SELECT i, k, b FROM t").unwrap();
        let mut rows = st.query([]).unwrap();
        while let Some(x) = rows.next().unwrap() {
            let i: i64 = x.get(0).unwrap();
            let (k, b) = row(i);
            assert_eq!(x.get::<_, Vec<u8>>(1).unwrap(), k);
            assert_eq!(x.get::<_, Vec<u8>>(2).unwrap(), b);
        }
        // And the log starts again from its beginning after a checkpoint:
        // the first write of the new log is not an append.
        drop(rows);
        drop(st);
        let (busy, _, _): (i64, i64, i64) = w
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |x| {
                Ok((x.get(0)?, x.get(1)?, x.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0);
        drop(r);
        w.execute(
            "INSERT INTO t (i, k, b) VALUES (?1, ?2, ?3)",
            (next, vec![1u8], vec![2u8]),
        )
        .unwrap();
        let frames: i64 = w
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |x| x.get(1))
            .unwrap();
        assert!(frames < 10, "the log started again: {frames} frames");
        let again = dir.path().join("again");
        copy_as_crashed(dir.path(), &again);
        let c = Connection::open(again.join("t.db")).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |x| x.get(0))
            .unwrap();
        assert_eq!(n, expected + 1);
    }
}
