//! Plumbing shared by the process helpers: finding binaries, reading their logs.

use std::path::{Path, PathBuf};

use std::ffi::OsStr;

/// The full path of `binary` on `PATH`, if any.
pub(crate) fn find_on_path(binary: &str) -> Option<PathBuf> {
    find_in(&std::env::var_os("PATH")?, binary)
}

/// The full path of `binary` in the directories of `path` (a `PATH`-style list), if any.
pub(crate) fn find_in(path: &OsStr, binary: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// The last `lines` lines of a log file, for panic messages; a note when it cannot be read.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
