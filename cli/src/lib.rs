//! Weft's command-line tools as a library, so tests run exactly what the binaries run:
//! where `weftctl tokens` and `certs deny` act ([`credentials`]: a state directory or the
//! operator API), `weftctl`'s other commands besides `certs` ([`ctl`]: the operator commands, `top`,
//! `inject`, `crds`), and the per-route numbers ([`top`]) that `weftctl top` and `weft up`'s
//! live view share. The binaries are `weft` (`src/main.rs`) and `weftctl`
//! (`src/bin/weftctl.rs`).

pub mod credentials;
pub mod ctl;
pub mod inject;
pub mod top;
