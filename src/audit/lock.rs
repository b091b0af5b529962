//! One writer per trail (SPEC §6): the process that writes a trail holds an exclusive lock on
//! `<path>.lock` for as long as it runs, so a second `serve` on the same `audit.path` (a replica
//! configured with another's path, a restart before the old process ended) refuses to start
//! instead of interleaving two chains in one file. `audit repair` takes it too: it must not cut a
//! file a running gateway is writing. The lock is the kernel's (`flock`), released when the
//! process ends however it ends, so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// The exclusive lock on a trail; held until dropped.
#[derive(Debug)]
pub struct TrailLock {
    _file: File,
}

/// The lock file of the trail at `path`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl TrailLock {
    /// Takes the lock of the trail at `path`, or says who holds it.
    pub fn take(path: &Path) -> Result<TrailLock, String> {
        let lock = lock_path(path);
        let mut options = OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&lock)
            .map_err(|e| format!("cannot open the trail's lock {}: {e}", lock.display()))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(TrailLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(format!(
                "the audit trail {} is in use by another tokengate process (it holds {}): a trail has one writer, so give each replica its own audit.path",
                path.display(),
                lock.display()
            )),
            Err(error) => Err(format!(
                "cannot lock the audit trail through {}: {error}",
                lock.display()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trail.jsonl");
        let first = TrailLock::take(&path).unwrap();
        let refused = TrailLock::take(&path).unwrap_err();
        assert!(
            refused.contains("in use by another tokengate process"),
            "{refused}"
        );
        assert!(refused.contains("trail.jsonl"), "{refused}");
        drop(first);
        assert!(TrailLock::take(&path).is_ok());
    }
}
