//! Running real processes for tests: finding binaries, capturing their output in a log file,
//! stopping them by signal, and quoting their logs when something goes wrong.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

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
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A binary of this workspace, built by Cargo next to the running test.
///
/// Cargo gives a test `CARGO_BIN_EXE_<name>` only for the binaries of its own package. Tests that
/// run the binaries of *other* packages (`m3aggregator`, `m3coordinator`) find them in the target
/// dir of the test executable instead: a test runs as `target/<profile>/deps/<test>-<hash>`, and
/// `cargo build --workspace --bins` puts the binaries in `target/<profile>/`. `make test` builds
/// them before testing.
#[derive(Debug)]
pub struct Binary;

impl Binary {
    /// The path of the workspace binary `name`.
    ///
    /// # Panics
    /// When the binary is not built, with a message saying how to build it.
    pub fn path(name: &str) -> PathBuf {
        let exe = std::env::current_exe()
            .unwrap_or_else(|e| panic!("cannot find the running test executable: {e}"));
        Binary::path_from(&exe, name).unwrap_or_else(|message| panic!("{message}"))
    }

    /// The path of `name` for a test executable at `exe` (`target/<profile>/deps/<test>`), or
    /// the message to fail with.
    fn path_from(exe: &Path, name: &str) -> Result<PathBuf, String> {
        let not_built = || {
            format!("{name} is not built: run `cargo build --workspace --bins` (make test does)")
        };
        let deps = exe.parent().ok_or_else(not_built)?;
        // Usually `deps/`; a binary target's own executable sits directly in the profile dir.
        let profile_dir = if deps.file_name() == Some(OsStr::new("deps")) {
            deps.parent().ok_or_else(not_built)?
        } else {
            deps
        };
        let candidate = profile_dir.join(name);
        if candidate.is_file() {
            if let Some(newer) = newer_source(&candidate) {
                return Err(format!(
                    "{name} at {} is older than its source {}: run `cargo build --workspace --bins` \
                     (make test does), or the test would run yesterday's code",
                    candidate.display(),
                    newer.display()
                ));
            }
            Ok(candidate)
        } else {
            Err(format!(
                "{} (looked for {})",
                not_built(),
                candidate.display()
            ))
        }
    }
}

/// A source file of `binary` modified after it was built, from Cargo's dep-info file next to
/// the binary (`<binary>.d`, which lists every file the build read). `None` when the binary is
/// current or when there is no dep-info to tell.
fn newer_source(binary: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let dep_info = std::fs::read_to_string(binary.with_extension("d")).ok()?;
    let (_, sources) = dep_info.lines().next()?.split_once(": ")?;
    sources
        .split_whitespace()
        .map(PathBuf::from)
        .find(|source| {
            std::fs::metadata(source)
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified > built)
        })
}

/// A child process whose stdout and stderr go to a log file in its own temporary dir.
///
/// Dropping it kills the process (SIGKILL) and waits for it, so a failing test leaves nothing
/// behind. [`ChildProcess::kill`] and [`ChildProcess::terminate`] send SIGKILL and SIGTERM on
/// purpose. Its [`fmt::Display`] is the name, the pid and the tail of the log, for panic
/// messages:
///
/// ```no_run
/// # use m3_testkit::{Binary, ChildProcess};
/// # use std::process::Command;
/// let mut aggregator = ChildProcess::spawn("aggregator-1", Command::new(Binary::path("m3aggregator")));
/// assert!(aggregator.is_running(), "{aggregator}");
/// ```
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    _dir: TempDir,
}

impl fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("log", &self.log_path)
            .finish_non_exhaustive()
    }
}

/// How many log lines [`ChildProcess`]'s `Display` quotes.
const LOG_TAIL_LINES: usize = 40;

impl fmt::Display for ChildProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.exit {
            Some(status) => format!("exited with {status}"),
            None => "running".to_string(),
        };
        write!(
            f,
            "{} (pid {}, {state}); last {LOG_TAIL_LINES} lines of {}:\n{}",
            self.name,
            self.child.id(),
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }
}

impl ChildProcess {
    /// Spawns `command` with stdin closed and stdout and stderr appended to `<name>.log` in a
    /// new temporary dir. `name` labels the process in messages.
    ///
    /// # Panics
    /// When the temporary dir or the log file cannot be created, or the process cannot start.
    pub fn spawn(name: &str, mut command: Command) -> ChildProcess {
        let dir = tempfile::Builder::new()
            .prefix(&format!("m3-testkit-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary dir for {name}: {e}"));
        let log_path = dir.path().join(format!("{name}.log"));
        let log = open_log(&log_path);
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {name} ({}): {e}",
                    command.get_program().to_string_lossy()
                )
            });
        ChildProcess {
            name: name.to_string(),
            child,
            log_path,
            exit: None,
            _dir: dir,
        }
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (lossily decoded).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` until `path` on `address` answers 200.
    ///
    /// # Panics
    /// When the process exits first or the time runs out (the message quotes its log).
    pub fn wait_answering(&mut self, address: SocketAddr, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                panic!("{} exited while starting; {self}", self.name);
            }
            if let Some((200, _)) = http_get(address, path) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not answer {path} on {address} within {timeout:?}; {self}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process cleanly: SIGTERM, then SIGKILL if it still runs after `timeout`.
    pub fn stop_within(&mut self, timeout: Duration) {
        self.terminate();
        if self.wait_exit(timeout).is_none() {
            self.kill();
        }
    }

    /// Sends SIGKILL (a crash: no cleanup runs) and waits for the exit.
    pub fn kill(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.exit = Some(status);
        }
    }

    /// Sends SIGTERM (a clean shutdown request) and returns at once; see
    /// [`ChildProcess::wait_exit`].
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn terminate(&mut self) {
        self.signal("TERM");
    }

    /// Sends SIGSTOP: the process freezes as a VM or container paused by its host would, its
    /// sockets open and its timers stopped, until [`ChildProcess::resume`].
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn pause(&mut self) {
        self.signal("STOP");
    }

    /// Sends SIGCONT to a process stopped by [`ChildProcess::pause`].
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn resume(&mut self) {
        self.signal("CONT");
    }

    /// Sends the signal named `name` (`TERM`, `STOP`, ...); nothing when the process exited.
    fn signal(&mut self, name: &str) {
        if self.try_exit().is_some() {
            return;
        }
        // `kill` is a shell builtin, so this needs no package beyond `sh`.
        let status = Command::new("sh")
            .arg("-c")
            .arg("kill -s \"$1\" \"$2\"")
            .arg("sh")
            .arg(name)
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot send SIG{name} to {}: {e}", self.name));
        assert!(
            status.success() || self.try_exit().is_some(),
            "sending SIG{name} to {} failed: {status}",
            self.name
        );
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn open_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

/// Runs `command` to completion (bounded by `timeout`) with its output captured: the exit
/// status and stdout and stderr as text. For checking how a binary fails.
///
/// # Panics
/// When it cannot start, or still runs after `timeout` (it is then killed; the panic quotes its
/// output).
pub fn run_to_exit(name: &str, command: Command, timeout: Duration) -> (ExitStatus, String) {
    let mut process = ChildProcess::spawn(name, command);
    match process.wait_exit(timeout) {
        Some(status) => (status, process.log()),
        None => {
            process.kill();
            panic!("{name} still ran after {timeout:?}; {process}")
        }
    }
}

/// A plain HTTP/1.0 GET; the status code and body, `None` when nothing answers in time. For
/// readiness checks that need no HTTP client.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    let code = status
        .strip_prefix("HTTP/1.")?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    Some((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_is_looked_up_next_to_the_deps_dir() {
        let target = tempfile::tempdir().unwrap();
        let deps = target.path().join("debug").join("deps");
        std::fs::create_dir_all(&deps).unwrap();
        let exe = deps.join("walkthrough-0123");
        let err = Binary::path_from(&exe, "m3aggregator").unwrap_err();
        assert!(
            err.starts_with(
                "m3aggregator is not built: run `cargo build --workspace --bins` (make test does)"
            ),
            "{err}"
        );
        let built = target.path().join("debug").join("m3aggregator");
        std::fs::write(&built, b"").unwrap();
        assert_eq!(Binary::path_from(&exe, "m3aggregator").unwrap(), built);
    }

    /// Regression (issue 7): `cargo test -p m3-e2e` ran whatever binary was in target/.
    #[test]
    fn a_binary_older_than_its_sources_is_refused() {
        let target = tempfile::tempdir().unwrap();
        let deps = target.path().join("debug").join("deps");
        std::fs::create_dir_all(&deps).unwrap();
        let exe = deps.join("walkthrough-0123");
        let source = target.path().join("main.rs");
        std::fs::write(&source, b"fn main() {}").unwrap();
        let built = target.path().join("debug").join("m3aggregator");
        std::fs::write(&built, b"").unwrap();
        std::fs::write(
            target.path().join("debug").join("m3aggregator.d"),
            format!("{}: {}\n", built.display(), source.display()),
        )
        .unwrap();
        assert_eq!(Binary::path_from(&exe, "m3aggregator").unwrap(), built);
        // The source changes after the build.
        let later = std::time::SystemTime::now() + Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&source)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let err = Binary::path_from(&exe, "m3aggregator").unwrap_err();
        assert!(err.contains("is older than its source"), "{err}");
        assert!(err.contains("main.rs"), "{err}");
    }

    #[test]
    fn child_output_goes_to_its_log_and_signals_stop_it() {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("echo out; echo err >&2; exec sleep 30");
        let mut child = ChildProcess::spawn("sleeper", command);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !child.log().contains("err") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(child.is_running());
        assert_eq!(child.log_tail(2), "out\nerr");
        let shown = child.to_string();
        assert!(
            shown.starts_with("sleeper (pid ") && shown.ends_with("out\nerr"),
            "{shown}"
        );

        child.terminate();
        let status = child
            .wait_exit(Duration::from_secs(5))
            .expect("SIGTERM stops sleep");
        assert!(!status.success());
        assert!(child.to_string().contains("exited with"));

        let mut command = Command::new("sleep");
        command.arg("30");
        let mut child = ChildProcess::spawn("sleeper", command);
        child.kill();
        assert!(!child.is_running());
    }

    #[test]
    fn run_to_exit_returns_status_and_output() {
        let mut command = Command::new("sh");
        command.arg("-c").arg("echo bad key >&2; exit 2");
        let (status, output) = run_to_exit("failing", command, Duration::from_secs(5));
        assert_eq!(status.code(), Some(2));
        assert_eq!(output, "bad key\n");
    }
}
