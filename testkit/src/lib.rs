//! Test support shared by Weft's integration tests (a dev-dependency only, never shipped).
//!
//! The promises the suite makes rest here, so that each test does not re-invent them:
//! - **Nothing outlives its test.** [`process::spawn`] starts a child in its own process group,
//!   tied to the test process by `PR_SET_PDEATHSIG`, and kills the whole group when the guard is
//!   dropped, whether the test passed, failed or panicked. A test binary killed from outside (a
//!   timeout, Ctrl-C) takes its children with it. [`process::output_within`] runs a command that
//!   is expected to end (for example a binary that must refuse to start) with a deadline.
//! - **Ports no other test holds.** [`ports::reserve`] hands out loopback ports below the
//!   kernel's ephemeral range, each locked for the life of the test process.
//! - **Tools where setup put them.** [`tools::find`] looks where `scripts/setup` installs,
//!   not only on PATH.
//! - **Wait on the event, not the clock.** [`wait::until`] and [`wait::until_async`] poll a
//!   condition until it holds or a deadline passes, and fail with what was awaited.

// The one `unsafe` is `Command::pre_exec` in `process.rs` (no safe API sets the parent-death
// signal of a child before it runs); it is allowed there alone, with its reasoning.
#![deny(unsafe_code)]

pub mod ports;
pub mod process;
pub mod tools;
pub mod wait;
