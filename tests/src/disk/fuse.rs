//! The kernel's side of the power-cut filesystem: each FUSE request becomes a call on
//! the shared [`Model`]. Requests from a mount whose power was cut (an older
//! `epoch`) fail with `EIO`, like a dead disk, until it is unmounted.

use std::ffi::OsStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::model::{self, Attr, Ino, Kind, Model};

/// How long the kernel may cache names and attributes. Every change goes through the
/// kernel, and a cut is followed by a fresh mount, so the cache is never stale.
const TTL: Duration = Duration::from_secs(1);

/// The model and the epoch of the mount allowed to use it.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) model: Model,
    pub(super) epoch: u64,
    pub(super) held: HeldSyncs,
}

/// Syncs held back unanswered ([`Disk::hold_syncs`](super::Disk::hold_syncs)): whoever
/// called `fsync` waits, as on a disk that stalls, while other requests go on.
#[derive(Default)]
pub(super) struct HeldSyncs {
    pub(super) holding: bool,
    /// Each held sync's file and the reply its caller waits for, oldest first.
    pub(super) syncs: Vec<(Ino, ReplyEmpty)>,
}

impl std::fmt::Debug for HeldSyncs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldSyncs")
            .field("holding", &self.holding)
            .field("syncs", &self.syncs.len())
            .finish()
    }
}

/// Answers a sync: done as the model says, or failed.
pub(super) fn answer_sync(reply: ReplyEmpty, result: Result<(), model::Errno>) {
    empty(reply, result.map_err(Errno::from_i32));
}

/// One mount's view of the shared model.
pub(super) struct PowerCutFs {
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) epoch: u64,
    /// Told when a sync is held.
    pub(super) held: Arc<Condvar>,
}

impl PowerCutFs {
    /// The model, if this mount is still powered.
    fn model(&self) -> Result<MutexGuard<'_, Shared>, Errno> {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if shared.epoch == self.epoch {
            Ok(shared)
        } else {
            Err(Errno::EIO)
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Model) -> Result<T, model::Errno>) -> Result<T, Errno> {
        let mut shared = self.model()?;
        f(&mut shared.model).map_err(Errno::from_i32)
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    let (kind, nlink) = match attr.kind {
        Kind::File => (FileType::RegularFile, 1),
        Kind::Dir => (FileType::Directory, 2),
    };
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind,
        perm: attr.mode,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn ino(n: INodeNo) -> Ino {
    n.0
}

fn mode_bits(mode: u32, umask: u32) -> u16 {
    u16::try_from(mode & !umask & 0o7777).unwrap_or(0o644)
}

fn entry(reply: ReplyEntry, result: Result<Attr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn attr(reply: ReplyAttr, result: Result<Attr, Errno>) {
    match result {
        Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for PowerCutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(reply, self.with(|m| m.lookup(ino(parent), name)));
    }

    fn getattr(&self, _req: &Request, n: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        attr(reply, self.with(|m| m.attr(ino(n))));
    }

    fn setattr(
        &self,
        _req: &Request,
        n: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.with(|m| {
            if let Some(size) = size {
                m.truncate(ino(n), size)?;
            }
            if let Some(mode) = mode {
                m.set_mode(ino(n), mode_bits(mode, 0))?;
            }
            m.attr(ino(n))
        });
        attr(reply, result);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mode = mode_bits(mode, umask);
        entry(
            reply,
            self.with(|m| m.create(ino(parent), name, Kind::Dir, mode, true)),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.with(|m| m.remove(ino(parent), name, false)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.with(|m| m.remove(ino(parent), name, true)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let result =
            self.with(|m| m.rename(ino(parent), name, ino(new_parent), new_name, no_replace));
        empty(reply, result);
    }

    fn open(&self, _req: &Request, n: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|m| m.attr(ino(n))) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        n: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let shared = match self.model() {
            Ok(shared) => shared,
            Err(e) => return reply.error(e),
        };
        match shared.model.read(ino(n), offset, size) {
            Ok(bytes) => reply.data(bytes),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        n: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|m| m.write(ino(n), offset, data)) {
            Ok(written) => reply.written(u32::try_from(written).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _n: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // `close` is not a barrier: only fsync is.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        n: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut shared = match self.model() {
            Ok(shared) => shared,
            Err(e) => return reply.error(e),
        };
        if shared.held.holding {
            shared.held.syncs.push((ino(n), reply));
            self.held.notify_all();
            return;
        }
        answer_sync(reply, shared.model.sync(ino(n)));
    }

    fn readdir(
        &self,
        _req: &Request,
        n: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.with(|m| m.entries(ino(n))) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        let dots = [
            (OsStr::new(".").to_owned(), FileType::Directory, ino(n)),
            (OsStr::new("..").to_owned(), FileType::Directory, ino(n)),
        ];
        let all = dots.into_iter().chain(entries.into_iter().map(|(name, a)| {
            let kind = match a.kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            (name, kind, a.ino)
        }));
        for (index, (name, kind, child)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        n: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.fsync(req, n, fh, datasync, reply);
    }

    fn statfs(&self, _req: &Request, _n: INodeNo, reply: ReplyStatfs) {
        // Plenty of room: the broker's free-space checks never hold it back.
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mode = mode_bits(mode, umask);
        let exclusive = flags & libc::O_EXCL != 0;
        let result = self.with(|m| {
            let attr = m.create(ino(parent), name, Kind::File, mode, exclusive)?;
            if flags & libc::O_TRUNC != 0 {
                m.truncate(attr.ino, 0)?;
            }
            m.attr(attr.ino)
        });
        match result {
            Ok(attr) => reply.created(
                &TTL,
                &file_attr(&attr),
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }
}
