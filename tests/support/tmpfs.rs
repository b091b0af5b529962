//! A small tmpfs for the tests of a full disk (CI runs as root, so it can mount one).

use std::path::PathBuf;

/// A small tmpfs, unmounted when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (such as `"256k"`) at `at`. When it cannot (not root) the test
    /// fails under `CI=true` (CI runs as root, so there it must run, never skip), and elsewhere
    /// gets `None`, having printed why it skips.
    pub fn mount(at: PathBuf, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(&at).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            super::tools::missing("a tmpfs this test can mount", "run as root");
            return None;
        }
        Some(Tmpfs(at))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
