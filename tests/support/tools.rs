//! External tools the tests run: Python tools from the pinned virtual environment that `.ci/run`
//! makes (`.ci/requirements.txt`), at `$TOKENGATE_VENV` or `~/.cache/tokengate/venv`. A test that
//! needs a missing tool fails under `CI=true` (CI installs it) and is skipped, saying why, elsewhere.

use std::path::PathBuf;

/// The virtual environment's directory: `$TOKENGATE_VENV`, else `~/.cache/tokengate/venv`.
fn venv() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TOKENGATE_VENV").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/tokengate/venv"))
}

/// `<venv>/bin/<name>`, when it exists.
pub fn python_tool(name: &str) -> Option<std::path::PathBuf> {
    venv()
        .map(|dir| dir.join("bin").join(name))
        .filter(|path| path.is_file())
}

/// `python_tool(name)`, or: under `CI=true` a panic (CI must run every check), elsewhere `None`
/// after printing why the test is skipped.
pub fn require_tool(name: &str) -> Option<std::path::PathBuf> {
    let found = python_tool(name);
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed, and CI must run this test (.ci/run's python tools step installs it)"
        );
        eprintln!("skipping: {name} not installed (run .ci/run's python tools step)");
    }
    found
}
