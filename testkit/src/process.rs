//! Child processes that cannot outlive their test.
//!
//! A test that starts a sidecar, a control plane or `weft up` and then fails (a panic, a
//! timeout kill from the test runner) must not leave them running: they hold ports, burn the
//! CPU the next tests need, and are invisible to the runner. Three layers make sure:
//! - each child leads **its own process group**, so everything it starts in turn (the sidecars
//!   and apps of `weft up`) can be ended together with `killpg`, and a signal sent to the test
//!   runner's group does not reach it by surprise;
//! - the child gets a **parent-death signal** (`PR_SET_PDEATHSIG`): when the thread that
//!   spawned it goes away (the test thread ends, or the test binary is killed), the kernel
//!   signals it. `SIGKILL` by default; `SIGTERM` for a child that must stop its own children
//!   ([`spawn_with`]);
//! - dropping the [`Guard`] sends `SIGKILL` to the whole group and reaps the leader.
//!
//! The leader is only reaped in `Drop`: [`Guard::status`] observes an exit with `WNOWAIT`, which
//! leaves the zombie in place, so the process group ID cannot be handed to an unrelated process
//! before the `killpg` (the suite ends only processes it started).
//!
//! Note: the parent-death signal fires when the spawning *thread* ends. Spawn from the test
//! thread or a runtime worker (both live as long as the test), never from a short-lived
//! `spawn_blocking` thread.

use std::io::{self, Read};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a guarded child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(Signal),
}

impl Exit {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The exit code, if it exited rather than being killed.
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(c),
            Exit::Signal(_) => None,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by {s}"),
        }
    }
}

/// A running child in its own process group; the group is killed when this is dropped.
#[derive(Debug)]
pub struct Guard {
    child: Child,
    pid: Pid,
    exit: Option<Exit>,
}

/// Starts `cmd` guarded, with `SIGKILL` as its parent-death signal.
pub fn spawn(cmd: &mut Command) -> io::Result<Guard> {
    spawn_with(cmd, Signal::SIGKILL)
}

/// Starts `cmd` guarded, with `on_parent_death` as its parent-death signal (`SIGTERM` for a
/// child that must stop children of its own, like `weft up`).
pub fn spawn_with(cmd: &mut Command, on_parent_death: Signal) -> io::Result<Guard> {
    let parent = nix::unistd::getpid();
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It makes two system calls (prctl and getppid) through thin nix
    // wrappers that neither allocate nor take locks. There is no safe std or nix API that sets
    // the parent-death signal of a child before it runs its program.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(on_parent_death)?;
            // The parent may have died between fork and prctl: then no signal will come.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::other(
                    "the test process ended before its child started",
                ));
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
    Ok(Guard {
        child,
        pid,
        exit: None,
    })
}

/// Runs `cmd` to completion (guarded, stdin closed, stdout and stderr captured) and returns
/// its exit and output; panics if it has not ended within `limit`. For binaries expected to
/// end, such as one that must refuse to start: a regression that makes it serve instead fails
/// the test at the deadline rather than hanging the suite.
pub fn output_within(cmd: &mut Command, limit: Duration) -> (Exit, String, String) {
    let mut g = spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    // Read both pipes on their own threads so a chatty child never blocks on a full pipe.
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                s = String::from_utf8_lossy(&buf).into_owned();
            }
            s
        })
    };
    let out = reader(g.take_stdout().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = reader(g.take_stderr().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let exit = g.wait_within(limit);
    // Kill the group (a grandchild may hold the pipes open) and reap before reading.
    drop(g);
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match exit {
        Some(exit) => (exit, out, err),
        None => panic!("{cmd:?} still running after {limit:?}\nstdout:\n{out}\nstderr:\n{err}"),
    }
}

impl Guard {
    /// The child's process ID (also its process group ID).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's standard output, if it was piped and not yet taken.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's standard error, if it was piped and not yet taken.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Sends `sig` to the child alone (not its group): how a user stops it (Ctrl-C, SIGTERM).
    pub fn signal(&self, sig: Signal) {
        if self.exit.is_none() {
            let _ = kill(self.pid, sig);
        }
    }

    /// Whether the child has ended, without waiting; observed with `WNOWAIT`, so the child is
    /// not reaped (see the module docs).
    pub fn status(&mut self) -> Option<Exit> {
        if self.exit.is_none() {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            self.exit = match waitid(Id::Pid(self.pid), flags) {
                Ok(WaitStatus::Exited(_, code)) => Some(Exit::Code(code)),
                Ok(WaitStatus::Signaled(_, sig, _)) => Some(Exit::Signal(sig)),
                _ => None,
            };
        }
        self.exit
    }

    /// Kills the child alone with `SIGKILL` (a crash, as a test simulates one) and waits for
    /// it to end; what it started keeps running until the guard is dropped.
    pub fn kill(&mut self) -> Exit {
        self.signal(Signal::SIGKILL);
        self.wait_within(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("process {} survived SIGKILL for 30 s", self.pid))
    }

    /// The live processes of the child's process group (the child and what it started and
    /// did not move elsewhere), from `/proc`; zombies are not counted. Empty once everything
    /// the child started has ended.
    pub fn group_members(&self) -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the command name (in parentheses, which may hold spaces): state, ppid, pgrp.
            let rest = &stat[stat.rfind(')')? + 2..];
            let mut f = rest.split(' ');
            let state = f.next()?;
            let pgrp: i32 = f.nth(1)?.parse().ok()?;
            (pgrp == self.pid.as_raw() && state != "Z").then_some(pid)
        })
        .collect()
    }

    /// Waits up to `limit` for the child to end (polled, bounded by the deadline).
    pub fn wait_within(&mut self, limit: Duration) -> Option<Exit> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.status() {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // The leader is not reaped yet, so its process group ID is still ours to signal.
        let _ = killpg(self.pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        kill(Pid::from_raw(pid), None).is_ok()
    }

    #[test]
    fn drop_kills_the_child_and_what_it_started() {
        // A shell that starts a grandchild and reports its PID, then waits.
        let mut g = spawn(
            Command::new("sh")
                .args(["-c", "sleep 300 & echo $!; wait"])
                .stdout(Stdio::piped()),
        )
        .expect("spawn");
        let mut line = String::new();
        let mut out = g.take_stdout().expect("stdout");
        let mut byte = [0u8; 1];
        while out.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
            line.push(char::from(byte[0]));
        }
        let grandchild: i32 = line.trim().parse().expect("pid");
        assert!(alive(grandchild));
        drop(g);
        // The grandchild was in the group: killed. It is the shell's child, reaped by init
        // once orphaned, so wait for it to disappear.
        crate::wait::until("the grandchild to end", Duration::from_secs(10), || {
            (!alive(grandchild)).then_some(())
        });
    }

    #[test]
    fn group_members_lists_the_live_group() {
        let mut g = spawn(
            Command::new("sh")
                .args(["-c", "sleep 300 & echo started; wait"])
                .stdout(Stdio::piped()),
        )
        .expect("spawn");
        let mut out = g.take_stdout().expect("stdout");
        let mut line = [0u8; 8];
        out.read_exact(&mut line).expect("read");
        // The shell and its sleep.
        assert_eq!(g.group_members().len(), 2, "{:?}", g.group_members());
        let leader = g.id() as i32;
        assert!(g.group_members().contains(&leader));
        g.signal(Signal::SIGKILL);
        g.wait_within(Duration::from_secs(10)).expect("killed");
        // The leader is a zombie now (not counted); the sleep lives on in the group.
        assert_eq!(g.group_members().len(), 1, "{:?}", g.group_members());
    }

    #[test]
    fn status_reports_the_exit_without_reaping() {
        let mut g = spawn(Command::new("sh").args(["-c", "exit 3"])).expect("spawn");
        assert_eq!(g.wait_within(Duration::from_secs(10)), Some(Exit::Code(3)));
        // Still a zombie of ours: the PID (and process group) cannot be reused yet.
        assert!(alive(g.id() as i32));
        assert_eq!(g.status(), Some(Exit::Code(3)));
    }

    #[test]
    fn output_within_returns_exit_and_output() {
        let (exit, out, err) = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 2"]),
            Duration::from_secs(10),
        );
        assert_eq!(exit, Exit::Code(2));
        assert_eq!(out, "out\n");
        assert_eq!(err, "err\n");
    }

    #[test]
    #[should_panic(expected = "still running after")]
    fn output_within_fails_a_command_that_does_not_end() {
        output_within(Command::new("sleep").arg("300"), Duration::from_millis(200));
    }

    #[test]
    fn the_child_dies_with_the_thread_that_spawned_it() {
        let pid = std::thread::spawn(|| {
            let g = spawn(Command::new("sleep").arg("300")).expect("spawn");
            let pid = g.id();
            // Leak the guard: only the parent-death signal can end the child now.
            std::mem::forget(g);
            pid
        })
        .join()
        .expect("thread");
        let pid = i32::try_from(pid).expect("pid");
        crate::wait::until("the orphan to be killed", Duration::from_secs(10), || {
            // Killed by SIGKILL when the thread ended; reap it (it is still our child).
            match waitid(
                Id::Pid(Pid::from_raw(pid)),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
            ) {
                Ok(WaitStatus::Signaled(_, Signal::SIGKILL, _)) => Some(()),
                _ => None,
            }
        });
    }
}
