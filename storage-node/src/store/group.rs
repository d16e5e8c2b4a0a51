//! Group commit of directory fsyncs. A blob is durable once its file is fsynced, renamed into its
//! directory, and that directory is fsynced. When many blobs land in one directory at once (the segments of a
//! video), one directory fsync can cover every rename done before it started: a writer whose rename an fsync
//! already covers returns at once, the others share the next one. Each writer still waits for a directory
//! fsync that started after its rename, so nothing is acknowledged before it is durable.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Renames into one directory, counted, and how many of them an fsync covers.
#[derive(Debug, Default)]
struct DirState {
    renamed: AtomicU64,
    /// Renames covered by the last completed fsync; held while an fsync runs, so the next waits for it.
    synced: Mutex<u64>,
}

/// Directory fsyncs shared between concurrent writers.
#[derive(Debug, Default)]
pub struct DirSyncs {
    dirs: Mutex<HashMap<PathBuf, Weak<DirState>>>,
}

/// Directories remembered before the forgotten ones are dropped from the map.
const PRUNE_AT: usize = 1024;

impl DirSyncs {
    fn state(&self, dir: &Path) -> Arc<DirState> {
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = dirs.get(dir).and_then(Weak::upgrade) {
            return s;
        }
        if dirs.len() >= PRUNE_AT {
            dirs.retain(|_, w| w.strong_count() > 0);
        }
        let s = Arc::new(DirState::default());
        dirs.insert(dir.to_path_buf(), Arc::downgrade(&s));
        s
    }

    /// Call on a blocking thread right after a rename into `dir`: returns once an fsync of `dir` that began
    /// after the rename has completed (this thread's own, or one another writer ran meanwhile).
    pub fn after_rename(&self, dir: &Path) -> io::Result<()> {
        let state = self.state(dir);
        let ticket = state.renamed.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = state.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= ticket {
            metrics::counter!("distributary_blob_dir_syncs_shared_total").increment(1);
            return Ok(());
        }
        // Every rename counted so far happened before this read, so the fsync below covers them all.
        let upto = state.renamed.load(Ordering::SeqCst);
        common::durable::sync_dir(dir)?;
        *synced = upto;
        metrics::counter!("distributary_blob_dir_syncs_total").increment(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_covers_renames_before_it_and_not_after() {
        let dir = tempfile::tempdir().expect("tmp");
        let syncs = DirSyncs::default();
        let state = syncs.state(dir.path());
        // Two renames counted, then one writer syncs: both are covered.
        state.renamed.fetch_add(1, Ordering::SeqCst);
        syncs.after_rename(dir.path()).expect("sync");
        assert_eq!(*state.synced.lock().expect("lock"), 2);
        // A later rename is not covered by that sync: it runs its own.
        syncs.after_rename(dir.path()).expect("sync");
        assert_eq!(*state.synced.lock().expect("lock"), 3);
    }

    #[test]
    fn concurrent_writers_share_syncs() {
        let dir = tempfile::tempdir().expect("tmp");
        let syncs = Arc::new(DirSyncs::default());
        // Held across the writers: the map keeps a directory's state only while someone uses it.
        let state = syncs.state(dir.path());
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (s, d) = (syncs.clone(), dir.path().to_path_buf());
                std::thread::spawn(move || s.after_rename(&d).expect("sync"))
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        assert_eq!(
            *state.synced.lock().expect("lock"),
            16,
            "every rename covered"
        );
    }
}
