//! External tools the tests run: Python tools from the pinned virtual environment that `.ci/run`'s
//! "python tools" step makes (`.ci/requirements.txt`), found at `$TOKENGATE_VENV/bin/<tool>` or
//! `$HOME/.cache/tokengate/venv/bin/<tool>`. Under `CI=true` a missing tool fails the test;
//! elsewhere the test is skipped with a printed reason.

use std::path::PathBuf;

/// The path of Python tool `name` in the tests' virtual environment, if it is installed.
pub fn python_tool(name: &str) -> Option<PathBuf> {
    let venvs = [
        std::env::var_os("TOKENGATE_VENV").map(PathBuf::from),
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/tokengate/venv")),
    ];
    venvs
        .into_iter()
        .flatten()
        .map(|venv| venv.join("bin").join(name))
        .find(|path| path.is_file())
}

/// [`python_tool`], required: see [`missing`] when the tool is not installed.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = python_tool(name);
    if found.is_none() {
        missing(name, "run .ci/run's python tools step");
    }
    found
}

/// What a test does when something it needs (`what`) is missing here: under `CI` it fails (CI
/// installs or can do everything the tests need; `remedy` says how), elsewhere it prints why
/// it is skipped and the caller returns.
pub fn missing(what: &str, remedy: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what}: missing, and CI must run this test ({remedy})"
    );
    eprintln!("SKIPPED: {what}: missing ({remedy})");
}
