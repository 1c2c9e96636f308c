//! Collecting every problem of a config file before reporting, so a user fixes them in one go
//! instead of one per restart.
//!
//! Validation turns a parsed (raw) config into the settings a process runs with. It keeps going
//! after a bad value: each check adds what is wrong to a [`Problems`], falls back to a
//! placeholder so later checks can still run, and [`Problems::finish`] reports them all. One
//! problem is a [`ConfigError::Invalid`]; several are a [`ConfigError::Several`] that lists
//! each with its key.

use std::path::{Path, PathBuf};

use crate::ConfigError;

/// The problems found so far in the file at one path.
#[derive(Debug)]
pub struct Problems {
    path: PathBuf,
    found: Vec<(String, String)>,
}

impl Problems {
    /// No problems yet, in the file at `path`.
    pub fn new(path: &Path) -> Problems {
        Problems {
            path: path.to_path_buf(),
            found: Vec::new(),
        }
    }

    /// The file the problems are in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that the value at `key` is wrong because of `message`.
    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.found.push((key.into(), message.into()));
    }

    /// Records `error` (its key and message when it names one) and returns nothing; the value
    /// when there is no error.
    pub fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.absorb(error);
                None
            }
        }
    }

    /// Records every problem of `error`.
    pub fn absorb(&mut self, error: ConfigError) {
        self.absorb_under("", error);
    }

    /// As [`Problems::check`], for a block validated on its own whose keys sit under `prefix`
    /// in this file (e.g. `coordinator` in `m3 local`'s config): its keys are named in full.
    pub fn check_under<T>(&mut self, prefix: &str, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.absorb_under(prefix, error);
                None
            }
        }
    }

    fn absorb_under(&mut self, prefix: &str, error: ConfigError) {
        let full = |key: String| match (prefix.is_empty(), key.is_empty()) {
            (true, _) => key,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{key}"),
        };
        match error {
            ConfigError::Invalid { key, message, .. } => self.add(full(key), message),
            ConfigError::Several { problems, .. } => {
                for (key, message) in problems {
                    self.add(full(key), message);
                }
            }
            other => self.add(full(String::new()), other.to_string()),
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// `Ok(value)` when nothing was found, else the error listing every problem.
    ///
    /// # Errors
    /// A [`ConfigError::Invalid`] for one problem, [`ConfigError::Several`] for more.
    pub fn finish<T>(mut self, value: T) -> Result<T, ConfigError> {
        match self.found.len() {
            0 => Ok(value),
            1 => {
                let (key, message) = self.found.remove(0);
                Err(ConfigError::Invalid {
                    path: self.path,
                    key,
                    message,
                })
            }
            _ => Err(ConfigError::Several {
                path: self.path,
                problems: self.found,
            }),
        }
    }
}

/// The lines of [`ConfigError::Several`]'s message: one per problem.
pub(crate) fn list(problems: &[(String, String)]) -> String {
    let mut out = String::new();
    for (key, message) in problems {
        out.push_str("\n  ");
        if !key.is_empty() {
            out.push_str(&format!("key `{key}`: "));
        }
        out.push_str(message);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_found_is_ok_one_is_invalid_several_list_each_key() {
        let path = Path::new("c.yml");
        assert_eq!(Problems::new(path).finish(7).ok(), Some(7));

        let mut one = Problems::new(path);
        one.add("a.b", "must be positive");
        let err = one.finish(()).unwrap_err().to_string();
        assert_eq!(err, "config file c.yml: key `a.b`: must be positive");

        let mut several = Problems::new(path);
        several.add("a", "first");
        assert_eq!(several.check(Ok::<_, ConfigError>(3)), Some(3));
        assert_eq!(
            several.check::<()>(Err(ConfigError::invalid(path, "b", "second"))),
            None
        );
        let err = several.finish(()).unwrap_err().to_string();
        assert_eq!(
            err,
            "config file c.yml: 2 problems:\n  key `a`: first\n  key `b`: second"
        );
    }

    #[test]
    fn several_errors_absorbed_keep_every_problem() {
        let path = Path::new("c.yml");
        let mut inner = Problems::new(path);
        inner.add("x", "one");
        inner.add("y", "two");
        let mut outer = Problems::new(path);
        outer.add("z", "three");
        outer.check_under::<()>("block", inner.finish(()));
        let err = outer.finish(()).unwrap_err().to_string();
        for part in [
            "3 problems",
            "`block.x`: one",
            "`block.y`: two",
            "`z`: three",
        ] {
            assert!(err.contains(part), "{part} not in {err}");
        }
    }
}
