//! Load generation: a closed loop for saturation throughput and an open loop
//! (fixed request rate) for latency.
//!
//! Both run on the calling tokio runtime (meant to be a `current_thread`
//! runtime pinned to one core) with one task per connection, using the lean
//! client of [`crate::http1`]. Every loop is bounded in time and in count.
//!
//! The pieces: one request on a kept-alive connection ([`conn`]), the measured window
//! ([`window`]), the closed loop ([`saturation`]), the open loop ([`rate`]) and the open
//! loop that counts statuses ([`statuses`]).

pub mod conn;
pub mod rate;
pub mod saturation;
pub mod statuses;
#[cfg(test)]
mod testing;
pub mod window;

pub use conn::*;
pub use rate::*;
pub use saturation::*;
pub use statuses::*;
pub use window::*;
