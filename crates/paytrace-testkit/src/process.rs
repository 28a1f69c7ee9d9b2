//! Processes a test starts, stopped when the test ends, passed or failed.
//!
//! The rule: every program a test starts runs in a process group of its
//! own, and the [`Process`] that owns it kills the whole group (`SIGKILL`)
//! and reaps the leader when it is dropped: at the end of the test, or while
//! a failed assertion unwinds. A group and not the one process, because the
//! programs start others: chromedriver starts Chromium and its helpers, the
//! demo starts nine services, a Node driver starts its services. Killing
//! only the leader would leave those running.
//!
//! `scripts/test.sh` checks the rule at the end of the suite: every process
//! started under it carries `PAYTRACE_TEST_RUN` in its environment, and one
//! still alive then fails the run.

use std::process::{Child, Command, Output};

/// A child process in a process group of its own; the group is killed when
/// this is dropped.
///
/// ```
/// use std::process::Command;
/// let mut sleeper = paytrace_testkit::Process::spawn(
///     Command::new("sleep").arg("60"),
///     "coreutils",
/// );
/// let pid = sleeper.id();
/// drop(sleeper);
/// // Killed and reaped: the pid names no process any more (or another one).
/// let alive = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
///     .is_ok_and(|c| c.starts_with("sleep"));
/// assert!(!alive);
/// ```
#[derive(Debug)]
pub struct Process {
    /// The leader, until [`Process::stop`] or [`Process::output`] waits on it.
    child: Option<Child>,
    /// The group's id: the leader's pid.
    group: u32,
}

impl Process {
    /// Starts `cmd` as the leader of a new process group.
    ///
    /// # Panics
    ///
    /// When the program cannot be started; the message names the Debian
    /// package (or the step) that provides it: `install`.
    pub fn spawn(cmd: &mut Command, install: &str) -> Self {
        use std::os::unix::process::CommandExt as _;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.process_group(0).spawn().unwrap_or_else(|e| {
            panic!("cannot start {program} ({e}): install it with `{install}`")
        });
        let group = child.id();
        Self {
            child: Some(child),
            group,
        }
    }

    /// Starts `cmd` like [`Process::spawn`] and waits for it to exit, with
    /// what it wrote to its piped stdout and stderr. Dropped before then (a
    /// test's timeout), it kills the group at once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::process::{Command, Stdio};
    /// let out = paytrace_testkit::Process::spawn(
    ///     Command::new("echo").arg("hi").stdout(Stdio::piped()),
    ///     "coreutils",
    /// )
    /// .output()
    /// .await;
    /// assert_eq!(out.stdout, b"hi\n");
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// When the process cannot be waited on.
    pub async fn output(mut self) -> Output {
        let Some(child) = self.child.take() else {
            unreachable!("taken only by methods that consume self")
        };
        // `self` stays here: a dropped future drops it, which kills the
        // group, which ends the wait below.
        tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap_or_else(|e| panic!("the waiting task failed: {e}"))
            .unwrap_or_else(|e| panic!("cannot wait for the process: {e}"))
    }

    /// The leader's process id (also the group's id).
    pub fn id(&self) -> u32 {
        self.group
    }

    /// The leader, to wait on it, read its pipes or poll its status.
    ///
    /// # Panics
    ///
    /// Never in practice: the child is only taken by methods that consume
    /// `self`.
    pub fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only by methods that consume self"))
    }

    /// Sends `signal` (`TERM`, `INT`) to the leader alone, waits for it to
    /// exit and returns what it wrote (where its stdio was piped); then kills
    /// whatever it left in its group.
    ///
    /// # Panics
    ///
    /// When `kill` cannot be run or the process cannot be waited on.
    pub async fn stop(mut self, signal: &str) -> Output {
        let Some(child) = self.child.take() else {
            unreachable!("taken only by methods that consume self")
        };
        let pid = self.group;
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(sent.success(), "kill -{signal} {pid} failed");
        // Whatever the leader left in its group is killed when `self`
        // drops, after the wait.
        tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap_or_else(|e| panic!("the waiting task failed: {e}"))
            .unwrap_or_else(|e| panic!("cannot wait for the process: {e}"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        kill_group(self.group);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `SIGKILL` to every process of group `pgid` (none left is no error).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(std::process::Stdio::null())
        .status();
}
