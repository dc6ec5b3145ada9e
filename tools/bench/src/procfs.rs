//! Reading a process's memory and CPU use from `/proc`.

use std::collections::HashMap;
use std::io;
use std::sync::OnceLock;

/// Resident set size in KiB from the text of `/proc/PID/status` (`VmRSS`).
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// User + system CPU time in clock ticks from the text of `/proc/PID/stat`
/// (fields 14 `utime` and 15 `stime`).
///
/// The command name (field 2) is in parentheses and may contain spaces and
/// parentheses itself, so fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts with field 3 (state); utime is field 14 → index 11.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The fields of `/proc/PID/stat` the benchmark uses, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// Parent PID (field 4).
    pub ppid: u32,
    /// User + system time (fields 14, 15).
    pub cpu: u64,
    /// User + system time of reaped children (fields 16, 17).
    pub children_cpu: u64,
}

/// Parses [`StatFields`] from the text of `/proc/PID/stat`.
pub fn parse_stat_fields(stat: &str) -> Option<StatFields> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is index 0.
    let f: Vec<&str> = after_comm.split_whitespace().take(15).collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(StatFields {
        ppid: u32::try_from(num(1)?).ok()?,
        cpu: num(11)? + num(12)?,
        children_cpu: num(13)? + num(14)?,
    })
}

/// CPU ticks used so far by each user-space process except those in
/// `exclude` (and kernel threads), counting each one's own time plus that of
/// the children it has reaped. Processes that vanish while being read are
/// skipped.
pub fn other_processes_cpu_ticks(exclude: &[u32]) -> io::Result<HashMap<u32, u64>> {
    let mut out = HashMap::new();
    // Bounded: one iteration per /proc entry.
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if exclude.contains(&pid) || pid == 2 {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        match parse_stat_fields(&stat) {
            // Kernel threads are children of kthreadd (PID 2).
            Some(f) if f.ppid != 2 => {
                out.insert(pid, f.cpu + f.children_cpu);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// CPU ticks other processes used between two [`other_processes_cpu_ticks`]
/// readings: growth of the processes present in both, plus all of the time of
/// those that appeared in between. (Time of processes that started and ended
/// in between shows up in their parent's children time once reaped.)
pub fn other_cpu_ticks_between(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(pid, &t)| match before.get(pid) {
            Some(&b) => t.saturating_sub(b),
            None => t,
        })
        .sum()
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), 100 if it cannot be read
/// (the value on every common Linux configuration).
pub fn clock_ticks_per_second() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(
        || match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
            Ok(Some(t)) if t > 0 => u64::try_from(t).unwrap_or(100),
            _ => 100,
        },
    )
}

/// Cumulative time one CPU has spent busy and in total, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// `user + nice + system + irq + softirq + steal`.
    pub busy: u64,
    /// `busy + idle + iowait`.
    pub total: u64,
}

impl CpuTimes {
    /// Percentage of the time between `earlier` and `self` the CPU was busy.
    pub fn busy_pct_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| busy as f64 / total as f64 * 100.0)
    }
}

/// Per-CPU times from the text of `/proc/stat` (the `cpuN` lines), indexed
/// by CPU number; CPUs without a line (offline) are all zero.
pub fn parse_proc_stat_cpus(stat: &str) -> Vec<CpuTimes> {
    let mut out: Vec<CpuTimes> = Vec::new();
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(id) = fields
            .next()
            .and_then(|f| f.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        // user nice system idle iowait irq softirq steal (guest time is
        // already included in user/nice).
        let v: Vec<u64> = fields.take(8).map_while(|f| f.parse().ok()).collect();
        if v.len() < 4 || id > 4096 {
            continue;
        }
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        let times = CpuTimes {
            busy,
            total: busy + at(3) + at(4),
        };
        if out.len() <= id {
            out.resize(id + 1, CpuTimes::default());
        }
        out[id] = times;
    }
    out
}

/// Current per-CPU times of the whole machine.
pub fn cpu_times() -> io::Result<Vec<CpuTimes>> {
    Ok(parse_proc_stat_cpus(&std::fs::read_to_string(
        "/proc/stat",
    )?))
}

/// Busy percentage of each CPU between two [`cpu_times`] readings.
pub fn busy_pct(before: &[CpuTimes], after: &[CpuTimes]) -> Vec<Option<f64>> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| a.busy_pct_since(b))
        .collect()
}

fn invalid(what: &str, pid: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot parse {what} of pid {pid}"),
    )
}

/// Current resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss_kib(&status).ok_or_else(|| invalid("VmRSS", pid))
}

/// CPU time (user + system) `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| invalid("stat", pid))?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

/// CPU time (user + system) thread `tid` of process `pid` has used so far,
/// in seconds (`/proc/PID/task/TID/stat`; `/proc/TID/stat` would count the
/// whole process).
pub fn thread_cpu_seconds(pid: u32, tid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| invalid("stat", tid))?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss() {
        let status = "Name:\tweft-proxy\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  123456 kB\nVmRSS:\t    9876 kB\nRssAnon:\t    4000 kB\n";
        assert_eq!(parse_vm_rss_kib(status), Some(9876));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\tlots kB\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn stat_cpu() {
        // Fields: pid (comm) state ppid pgrp session tty tpgid flags minflt
        // cminflt majflt cmajflt utime stime ...
        let stat = "4242 (weft-proxy) S 1 4242 4242 0 -1 4194560 1500 0 3 0 250 70 0 0 20 0 3 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(320));
        // A command name with spaces and parentheses.
        let stat = "7 (a) b (c) R 1 7 7 0 -1 0 0 0 0 0 11 22 0 0 20 0 1 0 5";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(33));
        assert_eq!(parse_stat_cpu_ticks("7 (x) R 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("no parens"), None);
    }

    #[test]
    fn proc_stat_cpus() {
        let stat = "cpu  100 0 50 1000 10 0 5 0 0 0\n\
                    cpu0 60 0 30 400 5 0 5 0 0 0\n\
                    cpu2 40 1 20 600 5 2 0 3 0 0\n\
                    intr 12345 0 0\n\
                    ctxt 999\n";
        let cpus = parse_proc_stat_cpus(stat);
        assert_eq!(cpus.len(), 3);
        assert_eq!(
            cpus[0],
            CpuTimes {
                busy: 95,
                total: 500
            }
        );
        assert_eq!(cpus[1], CpuTimes::default());
        assert_eq!(
            cpus[2],
            CpuTimes {
                busy: 66,
                total: 671
            }
        );
        let later = [CpuTimes {
            busy: 145,
            total: 600,
        }];
        assert_eq!(busy_pct(&cpus[..1], &later), vec![Some(50.0)]);
        assert_eq!(busy_pct(&later, &cpus[..1]), vec![None]);
        assert_eq!(cpus[0].busy_pct_since(&cpus[0]), None);
    }

    #[test]
    fn stat_fields() {
        let stat =
            "4242 (cargo) S 77 4242 4242 0 -1 4194560 1500 0 3 0 250 70 1000 300 20 0 3 0 12345";
        assert_eq!(
            parse_stat_fields(stat),
            Some(StatFields {
                ppid: 77,
                cpu: 320,
                children_cpu: 1300
            })
        );
        assert_eq!(parse_stat_fields("1 (x) S 0 1 1 0 -1 0 0 0 0 0 5 5"), None);
    }

    #[test]
    fn other_cpu_between() {
        let before = HashMap::from([(10, 100), (11, 50), (12, 7)]);
        // 10 grew by 30, 11 is gone, 12 unchanged, 13 is new with 20.
        let after = HashMap::from([(10, 130), (12, 7), (13, 20)]);
        assert_eq!(other_cpu_ticks_between(&before, &after), 50);
    }

    #[test]
    fn other_processes_exclude_self() {
        let me = std::process::id();
        let others = other_processes_cpu_ticks(&[me]).unwrap();
        assert!(!others.contains_key(&me));
        let all = other_processes_cpu_ticks(&[]).unwrap();
        assert!(all.contains_key(&me));
    }

    #[test]
    fn own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        // CPU time is counted: it rises while this thread burns CPU (bounded by a deadline).
        let start = cpu_seconds(pid).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        while cpu_seconds(pid).unwrap() <= start {
            assert!(std::time::Instant::now() < deadline, "CPU time never rose");
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(clock_ticks_per_second() > 0);
        assert!(!cpu_times().unwrap().is_empty());
    }
}
