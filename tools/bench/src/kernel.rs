//! What the kernel did for the proxies during a fixed-rate window: the system calls they made
//! (counted by `perf stat` on the `raw_syscalls:sys_enter` tracepoint, one `perf` per process,
//! no sampling, so the count is exact and costs the proxies next to nothing) and the share of
//! their CPU time spent in the kernel (`stime` over `utime + stime` from `/proc/PID/stat`).
//!
//! At the rates meshes run at, a request travels alone: every hop is a wake-up, a read and a
//! write, and most of a proxy's CPU can be the kernel's. Callgrind counts only user-space
//! instructions; this is the other half of where the time goes.

use std::process::Stdio;
use std::time::Duration;

use crate::procfs::clock_ticks_per_second;
use serde::Serialize;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The perf event counted.
pub const SYSCALL_EVENT: &str = "raw_syscalls:sys_enter";
/// How long past its window a `perf stat` may take to report before its count is dropped.
const PERF_GRACE: Duration = Duration::from_secs(5);

/// Per watched process over the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KernelCounts {
    /// System calls entered, if `perf` could count them for every process.
    pub syscalls: Option<Vec<u64>>,
    /// CPU seconds in the kernel (`stime`).
    pub system_seconds: Vec<f64>,
    /// CPU seconds in all (`utime + stime`, the same clock ticks).
    pub stat_seconds: Vec<f64>,
}

impl KernelCounts {
    /// The system calls per one of `requests` and the kernel's share of CPU (percent) of the
    /// processes from index `skip` on (1 skips the app, which the peers' pairs list first).
    pub fn per_request(&self, requests: u64, skip: usize) -> (Option<f64>, Option<f64>) {
        let syscalls = self.syscalls.as_ref().and_then(|s| {
            (s.len() > skip && requests > 0)
                .then(|| s[skip..].iter().sum::<u64>() as f64 / requests as f64)
        });
        let all: f64 = self.stat_seconds.iter().skip(skip).sum();
        let kernel_pct = (self.stat_seconds.len() > skip && all > 0.0)
            .then(|| self.system_seconds.iter().skip(skip).sum::<f64>() / all * 100.0);
        (syscalls, kernel_pct)
    }
}

/// `(utime, stime)` in clock ticks from the text of `/proc/PID/stat` (fields 14 and 15,
/// counted after the command name's closing parenthesis, which may itself hold spaces).
pub fn parse_user_system_ticks(stat: &str) -> Option<(u64, u64)> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime = fields.next()?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// The count of [`SYSCALL_EVENT`] in `perf stat -x,` output (`COUNT,UNIT,EVENT,...` lines);
/// `None` if the event was not counted (`<not supported>`, `<not counted>`, or absent).
pub fn parse_perf_count(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let mut f = l.split(',');
        let count = f.next()?;
        let event = f.nth(1)?;
        (event == SYSCALL_EVENT)
            .then(|| count.trim().parse().ok())
            .flatten()
    })
}

fn user_system_ticks(pid: u32) -> Option<(u64, u64)> {
    parse_user_system_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// One `perf stat` counting `pid`'s system calls for `secs` (`-- sleep`: it stops by itself).
fn perf(pid: u32, secs: f64) -> Option<tokio::process::Child> {
    Command::new("perf")
        .args(["stat", "-x,", "--no-big-num", "-e", SYSCALL_EVENT, "-p"])
        .arg(pid.to_string())
        .args(["--", "sleep", &format!("{secs:.3}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()
}

/// [`KernelCounts`] of `watch` between `from` and `to`; `None` if `/proc` could not be read
/// (a process ended).
pub fn count(watch: &[u32], from: Instant, to: Instant) -> JoinHandle<Option<KernelCounts>> {
    let watch = watch.to_vec();
    tokio::spawn(async move {
        let read =
            || -> Option<Vec<(u64, u64)>> { watch.iter().map(|&p| user_system_ticks(p)).collect() };
        tokio::time::sleep_until(from).await;
        let a = read()?;
        let secs = to.saturating_duration_since(Instant::now()).as_secs_f64();
        let perfs: Vec<_> = watch.iter().map(|&p| perf(p, secs)).collect();
        tokio::time::sleep_until(to).await;
        let b = read()?;
        let mut syscalls = Some(Vec::with_capacity(perfs.len()));
        for p in perfs {
            let n = match p {
                Some(child) => {
                    match tokio::time::timeout(PERF_GRACE, child.wait_with_output()).await {
                        Ok(Ok(out)) => parse_perf_count(&String::from_utf8_lossy(&out.stderr)),
                        _ => None,
                    }
                }
                None => None,
            };
            syscalls = syscalls.zip(n).map(|(mut v, n)| {
                v.push(n);
                v
            });
        }
        let tck = clock_ticks_per_second() as f64;
        let (system_seconds, stat_seconds) = b
            .iter()
            .zip(&a)
            .map(|(b, a)| {
                let sys = b.1.saturating_sub(a.1);
                let all = (b.0 + b.1).saturating_sub(a.0 + a.1);
                (sys as f64 / tck, all as f64 / tck)
            })
            .unzip();
        Some(KernelCounts {
            syscalls,
            system_seconds,
            stat_seconds,
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_perf_output_parse() {
        let stat = "4242 (weft (proxy)) S 1 4242 4242 0 -1 4194560 511 0 0 0 137 58 0 0 20 0 3 0";
        assert_eq!(parse_user_system_ticks(stat), Some((137, 58)));
        assert_eq!(parse_user_system_ticks("garbage"), None);
        let perf = "\n12345,,raw_syscalls:sys_enter,5001234567,100.00,,\n";
        assert_eq!(parse_perf_count(perf), Some(12345));
        let missing = "<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n";
        assert_eq!(parse_perf_count(missing), None);
        assert_eq!(parse_perf_count("perf: command not found\n"), None);
    }

    /// This process's own calls: a real `perf` on a real PID. The machine's setup installs
    /// perf (scripts/setup); where it cannot count, the count is `None`, never a zero.
    #[tokio::test]
    async fn perf_counts_a_process_that_makes_system_calls() {
        let me = std::process::id();
        let from = Instant::now();
        let to = from + Duration::from_millis(600);
        let counts = count(&[me], from, to);
        // Bounded: 2,000 small writes, then the window ends.
        let mut sink = std::fs::File::create("/dev/null").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..2000 {
            std::io::Write::write_all(&mut sink, b"x").unwrap();
        }
        let k = counts.await.unwrap().unwrap();
        assert_eq!(k.system_seconds.len(), 1);
        assert!(k.stat_seconds[0] >= k.system_seconds[0]);
        let n = k
            .syscalls
            .expect("perf counted (installed by scripts/setup)")[0];
        assert!(n >= 2000, "{n} system calls counted for 2,000 writes");
    }
}
