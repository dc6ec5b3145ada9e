//! weft-benches: the `weft-bench` load benchmark.
//!
//! `weft-bench` measures one HTTP/1.1 keep-alive workload twice, interleaved
//! run by run: **direct** (client → app) and **weft** (client → sidecar A
//! outbound → mTLS HTTP/2 → sidecar B inbound → app). It reports saturation
//! throughput, open-loop latency at a fixed rate, the sidecars' memory and the
//! CPU each request costs, as medians with ratios to direct.
//!
//! ```text
//! cargo build --release -p weft-proxy -p weft-samples -p weft-benches && target/release/weft-bench
//! ```
//!
//! It also runs the resilience scenarios ([`resilience`]): one of three
//! endpoints of a service fails (client-visible success rate and latency
//! without vs. with the sidecar's resilience policies), and what the policies
//! cost the healthy pair's throughput; and the observability cost scenario
//! ([`observability`]): the pair's throughput with access logs on, with
//! tracing at 0 % and at 100 % (exporting to an in-process OTLP collector,
//! [`collector`]), against the default settings.
//!
//! The modules hold the pieces: a lean HTTP/1.1 client ([`http1`]), the
//! closed and open load loops ([`load`]), `/proc` parsing ([`procfs`]), the
//! proxies' system calls and kernel CPU in a window ([`kernel`]),
//! statistics ([`stats`]), the processes under test ([`mesh`]), the
//! resilience scenarios' configs and results ([`resilience`]), the
//! observability scenario's ([`observability`]) and the report
//! ([`report`]).
//!
//! The comparison with HAProxy and NGINX pairs (`weft-bench-peers`) is a crate
//! of its own, `weft-bench-peers` in `tools/bench-peers/`, built on this one.
//!
//! `weft-bench --cp-push` instead measures the control plane's push at
//! scale ([`cp_push`]): 100 … 1000 simulated sidecars on one real
//! `weft-control-plane`, the time until all have ACKed a policy change, and
//! the control plane's memory.

pub mod captured;
pub mod cli;
pub mod collector;
pub mod cp_push;
pub mod http1;
pub mod kernel;
pub mod load;
pub mod mesh;
pub mod observability;
pub mod pair;
pub mod procfs;
pub mod report;
pub mod resilience;
pub mod results;
pub mod stats;
