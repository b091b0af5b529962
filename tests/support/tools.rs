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

/// [`python_tool`], required: panics under `CI=true` when the tool is missing, and otherwise
/// prints why the test is skipped and returns `None`.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = python_tool(name);
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{name} is not installed (run .ci/run's python tools step); CI=true requires it"
            );
        }
        println!("skipping: {name} not installed (run .ci/run's python tools step)");
    }
    found
}
