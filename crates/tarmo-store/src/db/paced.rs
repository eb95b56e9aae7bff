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
//! The VFS is the platform's default ("unix") with `xOpen` replaced: a
//! main database file is opened by the default VFS into the tail of a
//! larger file structure whose methods forward to it, all but `xWrite`,
//! `xSync` and `xClose` unchanged. Every other file (the log, journals)
//! is the default VFS's own. Linux only (`sync_file_range`); elsewhere
//! [`name`] answers `None` and the connection uses the default.

/// Hand the disk this much at a time (and wait for the chunk before).
pub const CHUNK: i64 = 4 << 20;

/// How many chunks were handed to the disk, over the process (for tests
/// and for `/metrics`-style checks that the pacing runs at all).
pub fn chunks_handed() -> u64 {
    imp::HANDED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The same, by this thread only (a connection's files are written by the
/// thread that runs its statement).
pub fn chunks_handed_here() -> u64 {
    imp::HANDED_HERE.with(|c| c.get())
}

/// The VFS's name once registered (the first call registers it), or
/// `None` where it is not available.
pub fn name() -> Option<&'static str> {
    imp::register()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::ffi::{CStr, c_char, c_int, c_void};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use rusqlite::ffi;

    use super::CHUNK;

    pub static HANDED: AtomicU64 = AtomicU64::new(0);

    thread_local! {
        pub static HANDED_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    const NAME: &CStr = c"tarmo-paced";

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

    /// A main database file: our state, then (at [`real_of`]) the default
    /// VFS's file structure.
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
    }

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
            ours.xOpen = Some(x_open);
            let ours = Box::leak(Box::new(ours));
            if ffi::sqlite3_vfs_register(ours, 0) != ffi::SQLITE_OK {
                return None;
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

    unsafe extern "C" fn x_open(
        _vfs: *mut ffi::sqlite3_vfs,
        name: *const c_char,
        file: *mut ffi::sqlite3_file,
        flags: c_int,
        out_flags: *mut c_int,
    ) -> c_int {
        unsafe {
            let real = real_vfs();
            let open = (*real).xOpen.expect("xOpen");
            if flags & ffi::SQLITE_OPEN_MAIN_DB == 0 || name.is_null() {
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
                },
            );
            let inner = real_of(file);
            (*inner).pMethods = std::ptr::null();
            let rc = open(real, name, inner, flags, out_flags);
            if (*inner).pMethods.is_null() {
                return rc;
            }
            (*p).fd = libc::open(name, libc::O_RDONLY | libc::O_CLOEXEC);
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
                HANDED.fetch_add(1, Ordering::Relaxed);
                HANDED_HERE.with(|c| c.set(c.get() + 1));
                (p.prev_lo, p.prev_hi) = (p.lo, p.hi);
                (p.lo, p.hi, p.pending) = (i64::MAX, 0, 0);
            }
            rc
        }
    }

    unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
        unsafe {
            let p = &mut *(f as *mut Paced);
            (p.lo, p.hi, p.pending, p.prev_lo, p.prev_hi) = (i64::MAX, 0, 0, 0, 0);
            (real_methods(f).xSync.expect("xSync"))(real_of(f), flags)
        }
    }

    unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
        unsafe {
            let rc = (real_methods(f).xClose.expect("xClose"))(real_of(f));
            let p = &mut *(f as *mut Paced);
            if p.fd >= 0 {
                libc::close(p.fd);
                p.fd = -1;
            }
            p.base.pMethods = std::ptr::null();
            rc
        }
    }

    /// Forward a method to the default VFS's file, unchanged.
    macro_rules! forward {
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

    forward!(x_read, xRead, (buf: *mut c_void, amt: c_int, off: i64), ffi::SQLITE_IOERR);
    forward!(x_truncate, xTruncate, (size: i64), ffi::SQLITE_IOERR);
    forward!(x_file_size, xFileSize, (size: *mut i64), ffi::SQLITE_IOERR);
    forward!(x_lock, xLock, (level: c_int), ffi::SQLITE_IOERR);
    forward!(x_unlock, xUnlock, (level: c_int), ffi::SQLITE_IOERR);
    forward!(x_check_reserved, xCheckReservedLock, (out: *mut c_int), ffi::SQLITE_IOERR);
    forward!(x_file_control, xFileControl, (op: c_int, arg: *mut c_void), ffi::SQLITE_NOTFOUND);
    forward!(x_sector_size, xSectorSize, (), 4096);
    forward!(x_device, xDeviceCharacteristics, (), 0);
    forward!(x_shm_map, xShmMap, (region: c_int, size: c_int, extend: c_int, out: *mut *mut c_void), ffi::SQLITE_IOERR);
    forward!(x_shm_lock, xShmLock, (offset: c_int, n: c_int, flags: c_int), ffi::SQLITE_IOERR);
    forward!(x_shm_unmap, xShmUnmap, (delete: c_int), ffi::SQLITE_OK);
    forward!(x_fetch, xFetch, (off: i64, amt: c_int, out: *mut *mut c_void), {
        // No memory map: SQLite reads with xRead instead.
        *out = std::ptr::null_mut();
        ffi::SQLITE_OK
    });
    forward!(x_unfetch, xUnfetch, (off: i64, page: *mut c_void), ffi::SQLITE_OK);

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
    pub static HANDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    thread_local! {
        pub static HANDED_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
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
