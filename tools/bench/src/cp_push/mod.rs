//! The control-plane push at scale (`weft-bench --cp-push`): one real `weft-control-plane`
//! process, N simulated sidecars in this process, a policy change, and how long until every
//! sidecar has ACKed it.
//!
//! For each sidecar count N (100, 250, 500, 1000 by default) and each run, a **fresh** control
//! plane is started (pinned to the server CPU, with an operator-supplied CA root made here with
//! `weft-certs`, and a policy of [`SERVICES`] services with a weighted route each). Then:
//!
//! 1. **connect storm**: N sidecars connect at once, each a small task on this process's one
//!    runtime thread: real TCP, TLS 1.3 with a workload certificate of its service (one per
//!    service, from the same CA), a tonic `weft.control.v1` stream; `Hello` with a unique
//!    `127.0.0.x:port` endpoint (nothing listens there) and labels `version: v1|v2`; every
//!    `Snapshot` is answered with `Ack` at once and its arrival recorded. Measured: from the
//!    first connect until the control plane reports all N connected and in sync
//!    (`weft_cp_sidecars`), and until every sidecar holds a snapshot;
//! 2. **idle**: the control plane's RSS (`VmRSS`, and the high-water mark `VmHWM` of the storm)
//!    with N streams;
//! 3. **policy changes** (`--cp-changes`, default 3, one after another): the routes file is
//!    rewritten (atomically, by rename) with new weights for the routes to two services, so
//!    every sidecar's snapshot changes (a sidecar's snapshot leaves out routes to its own
//!    service). Measured per sidecar: from the rename until it sent its `Ack` of the new
//!    version; p50 / p99 / max over the N sidecars. The control plane's 250 ms directory poll
//!    is part of this time. Then the RSS again.
//!
//! Every wait has a timeout, only 127.0.0.1 is contacted, and the control plane (the only
//! process started) is ended by its PID on every exit path ([`ChildGuard`]).
//!
//! The pieces: the settings and the policy directory ([`policy`]), the simulated sidecars
//! ([`fleet`]), the run ([`run`]) and the results ([`results`]).

pub mod control_plane;
pub mod endpoint_change;
pub mod fleet;
pub mod policy;
pub mod results;
pub mod run;

pub use policy::*;
pub use results::*;
pub use run::*;
