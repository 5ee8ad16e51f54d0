//! A disk whose power the tests can cut: a FUSE filesystem (on the `fuser` crate,
//! mounted through `/dev/fuse`) that keeps everything in memory and, on
//! [`Disk::cut`], throws away whatever no `fsync`/`fdatasync` made durable, file data,
//! sizes and directory entries alike (`model.rs` has the rules). The broker runs
//! with its data dir on it; the harness cuts the power under load, then
//! [`Disk::remount`]s what survived and restarts the broker on it. A test can also
//! stall it: [`Disk::hold_syncs`] leaves every sync waiting until
//! [`Disk::release_syncs`].
//!
//! `sync_file_range`, what sled 0.34 flushes with upstream, never reaches a FUSE
//! filesystem: data only it covered counts as unsynced here, as on a real disk
//! whose power goes.

mod fuse;
mod model;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption};

pub use model::{Counts, Tear};

use fuse::{PowerCutFs, Shared};

/// A mounted power-cut filesystem; unmounted when dropped.
pub struct Disk {
    shared: Arc<Mutex<Shared>>,
    /// Told when a sync is held ([`Disk::hold_syncs`]).
    held: Arc<Condvar>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("mountpoint", &self.mountpoint)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl Disk {
    /// Mounts an empty disk on `mountpoint` (an existing, empty directory). Fails
    /// where FUSE is unavailable: `/dev/fuse` and the right to mount (root, or
    /// `fusermount3` from Debian's `fuse3`).
    pub fn mount(mountpoint: &Path) -> io::Result<Self> {
        let mut disk = Self {
            shared: Arc::default(),
            held: Arc::default(),
            mountpoint: mountpoint.to_owned(),
            session: None,
        };
        disk.mount_session()?;
        Ok(disk)
    }

    /// Mounts an empty disk where `data`'s data dir goes, for a broker started on
    /// it; panics, saying what mounting needs, where it cannot.
    pub fn mount_data_dir(data: &crate::DataDir) -> Self {
        std::fs::create_dir_all(data.path()).expect("the data dir's mount point");
        Self::mount(data.path()).expect(
            "mounting the power-cut disk (needs /dev/fuse and root or fusermount3; `make \
             test` installs fuse3)",
        )
    }

    fn mount_session(&mut self) -> io::Result<()> {
        let epoch = self.lock().epoch;
        let fs = PowerCutFs {
            shared: Arc::clone(&self.shared),
            epoch,
            held: Arc::clone(&self.held),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("quiver-power-cut".into()),
            MountOption::RW,
        ];
        self.session = Some(fuser::spawn_mount(fs, &self.mountpoint, &config)?);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the power: from this instant every request to the mount fails with `EIO`,
    /// and what it holds is what the last syncs made durable (torn as `tear` says).
    /// Syncs held by [`Disk::hold_syncs`] fail. Kill whatever uses the mount, then
    /// [`Disk::remount`].
    pub fn cut(&self, tear: Tear) {
        let mut shared = self.lock();
        shared.epoch += 1;
        shared.model.power_cut(tear);
        shared.held.holding = false;
        for (_, reply) in std::mem::take(&mut shared.held.syncs) {
            reply.error(fuser::Errno::EIO);
        }
    }

    /// Stalls the disk's syncs: from now on each `fsync`/`fdatasync` waits, unanswered,
    /// until [`Disk::release_syncs`] (reads and writes go on). For tests of what the
    /// broker does while its storage waits on the disk.
    pub fn hold_syncs(&self) {
        self.lock().held.holding = true;
    }

    /// Waits until at least `count` syncs are held, for at most `limit`; returns how
    /// many are.
    pub fn wait_for_held_syncs(&self, count: usize, limit: Duration) -> usize {
        let shared = self.lock();
        let (shared, _) = self
            .held
            .wait_timeout_while(shared, limit, |shared| shared.held.syncs.len() < count)
            .unwrap_or_else(PoisonError::into_inner);
        shared.held.syncs.len()
    }

    /// Carries out the held syncs, oldest first, answers them, and answers syncs at
    /// once again. Returns how many were held.
    pub fn release_syncs(&self) -> usize {
        let mut shared = self.lock();
        shared.held.holding = false;
        let held = std::mem::take(&mut shared.held.syncs);
        let count = held.len();
        for (ino, reply) in held {
            fuse::answer_sync(reply, shared.model.sync(ino));
        }
        count
    }

    /// Unmounts the dead mount and mounts what survived the cut in its place.
    pub fn remount(&mut self) -> io::Result<()> {
        self.unmount()?;
        self.mount_session()
    }

    fn unmount(&mut self) -> io::Result<()> {
        match self.session.take() {
            Some(session) => match session.umount_and_join() {
                // A request the kernel hands over just as the unmount shuts the
                // connection down fails with ECONNABORTED (`fuse_dev_do_read`), where
                // an idle connection ends with ENODEV, and fuser ends its session
                // cleanly only on ENODEV. Either way the session ended because we
                // unmounted; the request was the killed broker's. (Seen once in CI,
                // under load: a power-cut run stopped at "remounting the disk".)
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => Ok(()),
                result => result,
            },
            None => Ok(()),
        }
    }

    /// What the disk has seen so far: syncs, cuts, bytes thrown away.
    pub fn counts(&self) -> Counts {
        self.lock().model.counts()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!(
                "unmounting the power-cut disk at {}: {e}",
                self.mountpoint.display()
            );
        }
    }
}
