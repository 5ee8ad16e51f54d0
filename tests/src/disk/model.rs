//! The power-cut simulator's filesystem, without FUSE: files and directories in
//! memory, each with two states, what a program sees now and what is on "stable
//! storage" (what the last `fsync`/`fdatasync` of the file, or `fsync` of the
//! directory, made durable). A power cut throws the first away.
//!
//! The model is the one the kernel's documentation and LazyFS give for a crash:
//! - a file's data and size survive only as of its last sync;
//! - a directory's entries (creates, renames, unlinks) survive only as of the
//!   directory's last sync, whatever was synced inside the files they name;
//! - with [`Tear::Sectors`], a cut also keeps a random subset of the unsynced
//!   512-byte sectors, as a disk whose write cache reorders may: a torn, partial
//!   version of the unsynced writes instead of none of them.
//!
//! Inodes are never freed while mounted (a durable entry may still name one a rename
//! replaced); a cut drops those no entry reaches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use crate::rng::Rng;

/// The unit a torn write keeps or loses.
pub(crate) const SECTOR: usize = 512;
/// The unit dirty data is tracked in.
const PAGE: usize = 4096;

/// An inode number; the root directory is [`ROOT`].
pub(crate) type Ino = u64;
/// The root directory's inode.
pub(crate) const ROOT: Ino = 1;
/// A failure, as an errno value.
pub(crate) type Errno = i32;

/// What a power cut keeps of the writes no sync covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    /// Nothing.
    None,
    /// A random subset of their 512-byte sectors (seeded).
    Sectors(u64),
}

/// A file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// What `stat` shows of an inode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attr {
    /// Its number.
    pub(crate) ino: Ino,
    /// File or directory.
    pub(crate) kind: Kind,
    /// Bytes (files), entries (directories).
    pub(crate) size: u64,
    /// Permission bits.
    pub(crate) mode: u16,
    /// Last change.
    pub(crate) mtime: SystemTime,
}

/// What the filesystem has seen, and what cuts have thrown away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `fsync`/`fdatasync` calls on files.
    pub file_syncs: u64,
    /// `fsync` calls on directories.
    pub dir_syncs: u64,
    /// Power cuts.
    pub cuts: u64,
    /// Bytes written that cuts threw away (counted by page).
    pub bytes_lost: u64,
    /// Sectors of unsynced writes that torn cuts kept.
    pub sectors_kept: u64,
    /// Directory entries that cuts changed back.
    pub entries_lost: u64,
}

#[derive(Debug, Default)]
struct File {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Pages whose bytes may differ from `durable` (written or cut off since the last
    /// sync).
    dirty: BTreeSet<usize>,
}

impl File {
    fn mark(&mut self, from: usize, to: usize) {
        if to > from {
            self.dirty.extend(from / PAGE..=(to - 1) / PAGE);
        }
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        if self.data.len() < end {
            let old = self.data.len();
            self.data.resize(end, 0);
            self.mark(old, end);
        }
        self.data[offset..end].copy_from_slice(bytes);
        self.mark(offset, end);
    }

    fn truncate(&mut self, size: usize) {
        let old = self.data.len();
        self.data.resize(size, 0);
        self.mark(size.min(old), size.max(old));
    }

    fn sync(&mut self) {
        let len = self.data.len();
        self.durable.resize(len, 0);
        for &page in &self.dirty {
            let from = page * PAGE;
            if from >= len {
                break;
            }
            let to = (from + PAGE).min(len);
            self.durable[from..to].copy_from_slice(&self.data[from..to]);
        }
        self.dirty.clear();
    }

    /// Back to what is durable, keeping some unsynced sectors if `rng` tears.
    fn cut(&mut self, rng: Option<&mut Rng>, counts: &mut Counts) {
        let mut survivor = self.durable.clone();
        if let Some(rng) = rng {
            for &page in &self.dirty {
                for sector in (page * PAGE..(page + 1) * PAGE).step_by(SECTOR) {
                    if sector >= self.data.len() || !rng.percent(50) {
                        continue;
                    }
                    let end = (sector + SECTOR).min(self.data.len());
                    if survivor.len() < end {
                        survivor.resize(end, 0);
                    }
                    survivor[sector..end].copy_from_slice(&self.data[sector..end]);
                    counts.sectors_kept += 1;
                }
            }
        }
        counts.bytes_lost += (self.dirty.len() * PAGE) as u64;
        self.data = survivor.clone();
        self.durable = survivor;
        self.dirty.clear();
    }
}

#[derive(Debug, Default)]
struct Dir {
    entries: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
}

#[derive(Debug)]
enum Content {
    File(File),
    Dir(Dir),
}

#[derive(Debug)]
struct Inode {
    content: Content,
    mode: u16,
    mtime: SystemTime,
}

impl Inode {
    fn new(kind: Kind, mode: u16) -> Self {
        let content = match kind {
            Kind::File => Content::File(File::default()),
            Kind::Dir => Content::Dir(Dir::default()),
        };
        Self {
            content,
            mode,
            mtime: SystemTime::now(),
        }
    }

    fn attr(&self, ino: Ino) -> Attr {
        let (kind, size) = match &self.content {
            Content::File(f) => (Kind::File, f.data.len() as u64),
            Content::Dir(d) => (Kind::Dir, d.entries.len() as u64),
        };
        Attr {
            ino,
            kind,
            size,
            mode: self.mode,
            mtime: self.mtime,
        }
    }
}

/// The whole filesystem.
#[derive(Debug)]
pub(crate) struct Model {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    counts: Counts,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// An empty filesystem: a root directory, durable.
    pub(crate) fn new() -> Self {
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, Inode::new(Kind::Dir, 0o755));
        Self {
            inodes,
            next_ino: ROOT + 1,
            counts: Counts::default(),
        }
    }

    /// What it has seen so far.
    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    fn inode(&self, ino: Ino) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut File, Errno> {
        let inode = self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        inode.mtime = SystemTime::now();
        match &mut inode.content {
            Content::File(f) => Ok(f),
            Content::Dir(_) => Err(libc::EISDIR),
        }
    }

    fn dir(&self, ino: Ino) -> Result<&Dir, Errno> {
        match &self.inode(ino)?.content {
            Content::Dir(d) => Ok(d),
            Content::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut Dir, Errno> {
        let inode = self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        inode.mtime = SystemTime::now();
        match &mut inode.content {
            Content::Dir(d) => Ok(d),
            Content::File(_) => Err(libc::ENOTDIR),
        }
    }

    /// The attributes of `ino`.
    pub(crate) fn attr(&self, ino: Ino) -> Result<Attr, Errno> {
        Ok(self.inode(ino)?.attr(ino))
    }

    /// The entry `name` in directory `parent`.
    pub(crate) fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr, Errno> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        self.attr(ino)
    }

    /// Creates `name` in `parent`. An existing file is returned as it is unless
    /// `exclusive` (`O_EXCL`); an existing directory is always `EEXIST`.
    pub(crate) fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        mode: u16,
        exclusive: bool,
    ) -> Result<Attr, Errno> {
        if let Some(&ino) = self.dir(parent)?.entries.get(name) {
            let existing = self.attr(ino)?;
            return match (kind, existing.kind, exclusive) {
                (Kind::File, Kind::File, false) => Ok(existing),
                (Kind::File, Kind::Dir, false) => Err(libc::EISDIR),
                _ => Err(libc::EEXIST),
            };
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::new(kind, mode));
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        self.attr(ino)
    }

    /// Up to `size` bytes of a file from `offset`.
    pub(crate) fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<&[u8], Errno> {
        let Content::File(file) = &self.inode(ino)?.content else {
            return Err(libc::EISDIR);
        };
        let len = file.data.len();
        let from = usize::try_from(offset).map_or(len, |o| o.min(len));
        let to = from.saturating_add(size as usize).min(len);
        Ok(&file.data[from..to])
    }

    /// Writes `bytes` at `offset`, growing the file as needed.
    pub(crate) fn write(&mut self, ino: Ino, offset: u64, bytes: &[u8]) -> Result<usize, Errno> {
        let offset = usize::try_from(offset).map_err(|_| libc::EFBIG)?;
        self.file_mut(ino)?.write(offset, bytes);
        Ok(bytes.len())
    }

    /// Sets a file's size.
    pub(crate) fn truncate(&mut self, ino: Ino, size: u64) -> Result<(), Errno> {
        let size = usize::try_from(size).map_err(|_| libc::EFBIG)?;
        self.file_mut(ino)?.truncate(size);
        Ok(())
    }

    /// Sets the permission bits (durable at once: nothing here depends on them).
    pub(crate) fn set_mode(&mut self, ino: Ino, mode: u16) -> Result<(), Errno> {
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?.mode = mode;
        Ok(())
    }

    /// Removes the entry `name` (a file, or with `dir` an empty directory).
    pub(crate) fn remove(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let target = self.lookup(parent, name)?;
        match (target.kind, dir) {
            (Kind::File, true) => return Err(libc::ENOTDIR),
            (Kind::Dir, false) => return Err(libc::EISDIR),
            (Kind::Dir, true) if target.size > 0 => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        self.dir_mut(parent)?.entries.remove(name);
        Ok(())
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent`, replacing a file
    /// there unless `no_replace`.
    pub(crate) fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let source = self.lookup(parent, name)?;
        match self.lookup(new_parent, new_name) {
            Ok(_) if no_replace => return Err(libc::EEXIST),
            Ok(target) if target.kind != source.kind => {
                return Err(match target.kind {
                    Kind::Dir => libc::EISDIR,
                    Kind::File => libc::ENOTDIR,
                });
            }
            Ok(target) if target.kind == Kind::Dir && target.size > 0 => {
                return Err(libc::ENOTEMPTY);
            }
            _ => {}
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.dir_mut(new_parent)?
            .entries
            .insert(new_name.to_owned(), source.ino);
        Ok(())
    }

    /// A directory's entries, by name.
    pub(crate) fn entries(&self, ino: Ino) -> Result<Vec<(OsString, Attr)>, Errno> {
        self.dir(ino)?
            .entries
            .iter()
            .map(|(name, &ino)| Ok((name.clone(), self.attr(ino)?)))
            .collect()
    }

    /// `fsync`/`fdatasync`: a file's data and size, or a directory's entries, become
    /// durable.
    pub(crate) fn sync(&mut self, ino: Ino) -> Result<(), Errno> {
        match &mut self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?.content {
            Content::File(file) => {
                file.sync();
                self.counts.file_syncs += 1;
            }
            Content::Dir(dir) => {
                dir.durable.clone_from(&dir.entries);
                self.counts.dir_syncs += 1;
            }
        }
        Ok(())
    }

    /// The power goes: every file and directory is what its last sync made it (plus
    /// torn sectors, with [`Tear::Sectors`]), and inodes no entry reaches are gone.
    pub(crate) fn power_cut(&mut self, tear: Tear) {
        let mut rng = match tear {
            Tear::None => None,
            Tear::Sectors(seed) => Some(Rng::new(seed)),
        };
        // In inode order, so that a seed tears the same way every time.
        let mut inos: Vec<Ino> = self.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(inode) = self.inodes.get_mut(&ino) else {
                continue;
            };
            match &mut inode.content {
                Content::File(file) => file.cut(rng.as_mut(), &mut self.counts),
                Content::Dir(dir) => {
                    let changed = dir
                        .entries
                        .iter()
                        .filter(|&(name, ino)| dir.durable.get(name) != Some(ino))
                        .count()
                        + dir
                            .durable
                            .keys()
                            .filter(|name| !dir.entries.contains_key(*name))
                            .count();
                    self.counts.entries_lost += changed as u64;
                    dir.entries.clone_from(&dir.durable);
                }
            }
        }
        self.counts.cuts += 1;
        self.drop_unreachable();
    }

    fn drop_unreachable(&mut self) {
        let mut reached = BTreeSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if let Some(Inode {
                content: Content::Dir(dir),
                ..
            }) = self.inodes.get(&ino)
            {
                for &child in dir.entries.values() {
                    if reached.insert(child) {
                        todo.push(child);
                    }
                }
            }
        }
        self.inodes.retain(|ino, _| reached.contains(ino));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(model: &mut Model, parent: Ino, n: &str) -> Ino {
        model
            .create(parent, name(n), Kind::File, 0o644, true)
            .unwrap()
            .ino
    }

    fn contents(model: &Model, parent: Ino, n: &str) -> Option<Vec<u8>> {
        let ino = model.lookup(parent, name(n)).ok()?.ino;
        Some(model.read(ino, 0, u32::MAX).unwrap().to_vec())
    }

    #[test]
    fn a_cut_keeps_what_was_synced_and_nothing_after() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "log");
        m.sync(ROOT).unwrap();
        m.write(f, 0, b"synced").unwrap();
        m.sync(f).unwrap();
        m.write(f, 6, b" and more").unwrap();
        m.write(f, 0, b"S").unwrap();
        m.power_cut(Tear::None);
        assert_eq!(contents(&m, ROOT, "log").unwrap(), b"synced");
        assert!(m.counts().bytes_lost > 0);
    }

    #[test]
    fn a_file_whose_directory_was_not_synced_is_gone() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "new");
        m.write(f, 0, b"data").unwrap();
        m.sync(f).unwrap();
        m.power_cut(Tear::None);
        assert_eq!(contents(&m, ROOT, "new"), None);
        assert_eq!(m.counts().entries_lost, 1);
    }

    #[test]
    fn an_unsynced_rename_is_undone_and_the_old_file_is_whole() {
        let mut m = Model::new();
        let old = file(&mut m, ROOT, "auth");
        m.write(old, 0, b"old").unwrap();
        m.sync(old).unwrap();
        m.sync(ROOT).unwrap();
        let tmp = file(&mut m, ROOT, "tmp");
        m.write(tmp, 0, b"new").unwrap();
        m.sync(tmp).unwrap();
        m.rename(ROOT, name("tmp"), ROOT, name("auth"), false)
            .unwrap();
        assert_eq!(contents(&m, ROOT, "auth").unwrap(), b"new");
        m.power_cut(Tear::None);
        assert_eq!(contents(&m, ROOT, "auth").unwrap(), b"old");
        assert_eq!(contents(&m, ROOT, "tmp"), None);
    }

    #[test]
    fn a_synced_rename_keeps_the_new_file() {
        let mut m = Model::new();
        let tmp = file(&mut m, ROOT, "tmp");
        m.write(tmp, 0, b"new").unwrap();
        m.sync(tmp).unwrap();
        m.rename(ROOT, name("tmp"), ROOT, name("auth"), false)
            .unwrap();
        m.sync(ROOT).unwrap();
        m.power_cut(Tear::None);
        assert_eq!(contents(&m, ROOT, "auth").unwrap(), b"new");
    }

    #[test]
    fn a_shrink_then_regrow_syncs_the_zeros_between() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f");
        m.sync(ROOT).unwrap();
        m.write(f, 0, &[7u8; 10_000]).unwrap();
        m.sync(f).unwrap();
        m.truncate(f, 5000).unwrap();
        m.write(f, 9000, &[9u8; 1000]).unwrap();
        m.sync(f).unwrap();
        m.power_cut(Tear::None);
        let data = contents(&m, ROOT, "f").unwrap();
        assert_eq!(data.len(), 10_000);
        assert!(data[..5000].iter().all(|&b| b == 7));
        assert!(data[5000..9000].iter().all(|&b| b == 0));
        assert!(data[9000..].iter().all(|&b| b == 9));
    }

    #[test]
    fn a_torn_cut_keeps_some_unsynced_sectors_and_only_those() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f");
        m.sync(ROOT).unwrap();
        m.write(f, 0, &[1u8; 4096]).unwrap();
        m.sync(f).unwrap();
        m.write(f, 0, &[2u8; 64 * 1024]).unwrap();
        m.power_cut(Tear::Sectors(7));
        let data = contents(&m, ROOT, "f").unwrap();
        let kept = m.counts().sectors_kept as usize;
        assert!(kept > 0 && kept < 128, "{kept} of 128 sectors kept");
        for sector in data.chunks(SECTOR) {
            let first = sector[0];
            assert!(
                sector.iter().all(|&b| b == first),
                "sectors are kept or lost whole"
            );
        }
        let twos = data.iter().filter(|&&b| b == 2).count();
        assert_eq!(twos, kept * SECTOR);
    }

    #[test]
    fn unreachable_inodes_are_dropped_at_a_cut() {
        let mut m = Model::new();
        let d = m
            .create(ROOT, name("d"), Kind::Dir, 0o755, true)
            .unwrap()
            .ino;
        let f = file(&mut m, d, "f");
        m.sync(d).unwrap();
        m.power_cut(Tear::None);
        assert_eq!(m.attr(d).err(), Some(libc::ENOENT));
        assert_eq!(m.attr(f).err(), Some(libc::ENOENT));
    }
}
