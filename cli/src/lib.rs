//! Weft's command-line tools as a library, so tests run exactly what the binaries run:
//! `weftctl`'s commands besides `certs` and `tokens` ([`ctl`]: the operator commands, `top`,
//! `inject`, `crds`), and the per-route numbers ([`top`]) that `weftctl top` and `weft up`'s
//! live view share. The binaries are `weft` (`src/main.rs`) and `weftctl`
//! (`src/bin/weftctl.rs`).

pub mod ctl;
pub mod inject;
pub mod top;
