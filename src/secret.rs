//! Secret values (the upstream access token) and where they come from.
//!
//! Secrets are never written in the config file itself: `*_env` names an environment variable,
//! `*_file` a file. A [`Secret`] prints as `***` in `Debug` and `Display`, so it cannot reach a log
//! line or an error message by accident; code that needs the value calls [`Secret::expose`].

use std::fmt;
use std::path::Path;

/// A secret string. Its `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<Box<str>>) -> Secret {
        Secret(value.into())
    }

    /// The value itself. Call only where it is sent, never where it could be printed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(value: &str) -> Result<Secret, Self::Err> {
        Ok(Secret::new(value))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Reads a secret from the environment variable `name`, surrounding white space removed.
pub fn from_env(name: &str) -> Result<Secret, String> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(Secret::new(value.trim())),
        Ok(_) => Err(format!("the environment variable {name} is empty")),
        Err(std::env::VarError::NotPresent) => {
            Err(format!("the environment variable {name} is not set"))
        }
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "the environment variable {name} is not valid UTF-8"
        )),
    }
}

/// Reads a secret from the file at `path`, surrounding white space removed.
pub fn from_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Err(format!("the file {} is empty", path.display()));
    }
    Ok(Secret::new(text.trim()))
}

/// Removes an optional `Bearer` scheme (any letter case, then any run of spaces or tabs) from a
/// credential, after trimming it: `Bearer tg_x`, `bearer  tg_x`, `BEARER tg_x` and `tg_x` all give
/// `tg_x` (SPEC §3). `Bearer` alone gives the empty string.
pub fn strip_bearer(value: &str) -> &str {
    let value = value.trim();
    let bytes = value.as_bytes();
    if bytes.len() >= 6 && bytes[..6].eq_ignore_ascii_case(b"bearer") {
        // The first six bytes are ASCII, so index 6 is a character boundary.
        let rest = &value[6..];
        if rest.is_empty() {
            return rest;
        }
        if rest.starts_with([' ', '\t']) {
            return rest.trim_start_matches([' ', '\t']);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new("s3cr3t-value");
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        assert_eq!(secret.expose(), "s3cr3t-value");
    }

    #[test]
    fn bearer_is_stripped_in_every_spelling() {
        for value in [
            "Bearer tg_x",
            "bearer  tg_x",
            "BEARER tg_x",
            "tg_x",
            " \tBearer\t tg_x  ",
            "BeArEr tg_x",
        ] {
            assert_eq!(strip_bearer(value), "tg_x", "{value:?}");
        }
        assert_eq!(strip_bearer("Bearer"), "");
        assert_eq!(strip_bearer("Bearertg_x"), "Bearertg_x");
        assert_eq!(strip_bearer("Béarer x"), "Béarer x");
    }
}
