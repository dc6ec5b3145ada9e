//! Loopback ports for processes a test starts, reserved across the whole test run.
//!
//! The sidecar binds the addresses its config names, so a test must choose ports before the
//! process starts. "Bind port 0, read the port, close, hand it over" races twice: the kernel
//! hands the same ephemeral port to another test process (nextest runs tests in parallel
//! processes, so no in-process bookkeeping can prevent it), and any outgoing connection may
//! take it as its local port before the sidecar binds it. So, as sozu's e2e port registry
//! does, ports come from **below the kernel's ephemeral range** (`ip_local_port_range`), where
//! no outgoing connection and no `bind(0)` lands, and each is claimed with an exclusive
//! `flock` on a file under the temp directory, held until the test process ends (the kernel
//! drops the lock even when the process is killed), so two test processes never get the same
//! port at once.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;

/// The lowest port handed out: clear of the well-known and commonly used low ports.
const FIRST: u16 = 10_000;
/// One past the highest port handed out: `weft up` picks its own from 20000 up.
const LAST: u16 = 20_000;
/// How many random picks before giving up (bounded: at most this many files and binds).
const TRIES: usize = 2_000;

/// Lock files of the ports this process holds: kept open, so the locks last until exit.
static HELD: Mutex<Vec<(u16, File)>> = Mutex::new(Vec::new());

/// The first port of the kernel's ephemeral range (`bind(0)` and outgoing connections take
/// ports from there); 32768 if it cannot be read.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("weft-test-ports")
}

/// A loopback port nobody else in this test run holds and nothing listens on, reserved for
/// the life of this process; panics after [`TRIES`] picks.
pub fn reserve() -> u16 {
    // Below `weft up`'s ports (weft_cli's `PORTS_FROM`, 20000), which a test may run beside.
    let end = ephemeral_start().clamp(FIRST + 1_000, LAST);
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..TRIES {
        let port = fastrand::u16(FIRST..end);
        if held.iter().any(|(p, _)| *p == port) {
            continue;
        }
        let Ok(file) = File::create(dir.join(port.to_string())) else {
            continue;
        };
        // Another test process holds it: pick again.
        if file.try_lock().is_err() {
            continue;
        }
        // Free of listeners right now (a process outside the suite may use it).
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        held.push((port, file));
        return port;
    }
    panic!(
        "no free loopback port in {TRIES} picks from {FIRST}..{end} (locks in {})",
        dir.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_below_the_ephemeral_range_and_locked() {
        let ports: Vec<u16> = (0..50).map(|_| reserve()).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "a port was handed out twice");
        assert!(ports.iter().all(|p| *p >= FIRST && *p < ephemeral_start()));
        // Another process (here: another open file description) cannot take the lock.
        let again = File::create(lock_dir().join(ports[0].to_string())).expect("open");
        assert!(again.try_lock().is_err(), "the lock is not held");
        // And the port is bindable by the process the test starts.
        assert!(TcpListener::bind(("127.0.0.1", ports[0])).is_ok());
    }
}
