//! Traffic listeners bound before Pingora starts, so the sidecar knows (and can report) the
//! ports it listens on: a configured port of 0 means one the kernel picks, which tests and
//! tools read from `--ready-file` or `/config_dump` instead of racing to pick a free port.
//!
//! Pingora binds a listening service's addresses itself when it starts, unless the process
//! inherited a socket for that address (a graceful upgrade). [`Prebound`] uses that door: it
//! puts the sockets bound here into Pingora's table of inherited sockets, under the address
//! the service is told to listen on, just before the service starts.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, OwnedFd};

use async_trait::async_trait;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;

/// A listener bound ahead of Pingora.
#[derive(Debug)]
pub struct Bound {
    /// The address it is bound to (the kernel's port when 0 was asked for).
    pub addr: SocketAddr,
    fd: OwnedFd,
}

/// Bind `addr` now; `what` names the listener in the error.
pub fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<Bound> {
    let listener =
        TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("listen.{what} {addr}: {e}"))?;
    // Pingora's runtime takes the socket over as it is: it must not block.
    listener.set_nonblocking(true)?;
    Ok(Bound {
        addr: listener.local_addr()?,
        fd: OwnedFd::from(listener),
    })
}

/// A Pingora service whose listeners were bound ahead of it (see the module docs).
pub struct Prebound<S> {
    inner: S,
    bound: Vec<Bound>,
}

impl<S> Prebound<S> {
    /// `inner`, told to listen on each of `bound`'s addresses, takes these sockets.
    pub fn new(inner: S, bound: Vec<Bound>) -> Self {
        Self { inner, bound }
    }
}

#[async_trait]
impl<S: Service> Service for Prebound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        match &fds {
            Some(table) => {
                let mut table = table.lock();
                for b in self.bound.drain(..) {
                    table.add(b.addr.to_string(), b.fd.into_raw_fd());
                }
            }
            // Pingora always passes its table on Unix; without one it would bind the
            // addresses itself and find them taken.
            None => log::error!("no listener table from Pingora: the traffic ports stay closed"),
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd)
            .await;
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_binds_a_port_the_kernel_picks_and_says_which() {
        let b = bind(SocketAddr::from(([127, 0, 0, 1], 0)), "outbound").expect("bind");
        assert_ne!(b.addr.port(), 0);
        let taken = bind(b.addr, "inbound").expect_err("taken");
        assert!(
            taken
                .to_string()
                .starts_with(&format!("listen.inbound {}: ", b.addr)),
            "{taken}"
        );
    }
}
