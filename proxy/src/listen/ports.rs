//! Dedicated outbound ports that appear after start: a config reload or a control-plane
//! snapshot may add a service with its own `port` (opaque TCP needs one), and Pingora binds
//! its listeners only at start.
//!
//! The [`PortManager`] (a Pingora background service) wakes on every snapshot swapped in
//! ([`Store::subscribe`]), compares the ports of the snapshot in force with what is bound,
//! binds new ones on 127.0.0.1 and closes ports no longer configured (their open connections
//! finish). Connections it accepts go to the same dispatcher as the start-time listeners, with
//! the same socket digest, so the dispatcher finds the destination by local port either way.
//! Ports bound at start stay with Pingora; a port that cannot be bound (taken by another
//! process) is logged and retried every [`BIND_RETRY`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::listener::Listener;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::task::JoinHandle;

use crate::store::Store;

/// How long a port that could not be bound waits before the next try.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Binds and closes dedicated outbound ports as the config changes.
pub struct PortManager<A> {
    store: Arc<Store>,
    app: Arc<A>,
    /// Bound by Pingora at start; never rebound here.
    at_start: BTreeSet<u16>,
}

impl<A> PortManager<A> {
    /// A manager dispatching to `app`; `at_start` are the ports Pingora already listens on.
    pub fn new(store: Arc<Store>, app: Arc<A>, at_start: BTreeSet<u16>) -> Self {
        Self {
            store,
            app,
            at_start,
        }
    }
}

enum Slot {
    Bound(JoinHandle<()>),
    /// Binding failed; try again at this instant.
    Failed(tokio::time::Instant),
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> BackgroundService for PortManager<A> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut slots: BTreeMap<u16, Slot> = BTreeMap::new();
        let mut changes = self.store.subscribe();
        loop {
            // Compared before each wait, so a swap between start-up and subscribing counts.
            let wanted: BTreeSet<u16> = self
                .store
                .load()
                .routes
                .outbound_ports()
                .into_iter()
                .map(|(p, _)| p)
                .filter(|p| !self.at_start.contains(p))
                .collect();
            slots.retain(|port, slot| {
                let keep = wanted.contains(port);
                if !keep {
                    if let Slot::Bound(task) = slot {
                        task.abort();
                        log::info!("dedicated port 127.0.0.1:{port} closed (no longer configured)");
                    }
                }
                keep
            });
            for port in wanted {
                let now = tokio::time::Instant::now();
                match slots.get(&port) {
                    Some(Slot::Bound(_)) => continue,
                    Some(Slot::Failed(at)) if *at > now => continue,
                    _ => {}
                }
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let slot = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => {
                        log::info!("dedicated port {addr} bound (added by a config change)");
                        Slot::Bound(tokio::spawn(accept(
                            Listener::from(l),
                            self.app.clone(),
                            shutdown.clone(),
                        )))
                    }
                    Err(e) => {
                        log::error!(
                            "cannot bind dedicated port {addr}: {e}; retrying in {BIND_RETRY:?}"
                        );
                        Slot::Failed(now + BIND_RETRY)
                    }
                };
                slots.insert(port, slot);
            }
            // Woken by the next swap, or by the earliest retry of a port that could not be bound.
            let retry = slots
                .values()
                .filter_map(|s| match s {
                    Slot::Failed(at) => Some(*at),
                    Slot::Bound(_) => None,
                })
                .min();
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = sleep_until(retry) => {}
                _ = shutdown.changed() => break,
            }
        }
        // Draining: no new connections; the ones accepted finish on their own tasks.
        for slot in slots.into_values() {
            if let Slot::Bound(task) = slot {
                task.abort();
            }
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn accept<A: ServerApp + Send + Sync + 'static>(
    listener: Listener,
    app: Arc<A>,
    shutdown: ShutdownWatch,
) {
    loop {
        match listener.accept().await {
            Ok(mut stream) => {
                if let Err(e) = stream.set_nodelay() {
                    log::debug!("set_nodelay: {e}");
                }
                let (app, shutdown) = (app.clone(), shutdown.clone());
                tokio::spawn(async move {
                    app.process_new(Box::new(stream), &shutdown).await;
                });
            }
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                log::warn!("dedicated port accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pingora_core::protocols::Stream;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::store::test_support::store_with_files;

    /// Answers every connection with `hi` and closes it.
    struct Hi;

    #[async_trait]
    impl ServerApp for Hi {
        async fn process_new(
            self: &Arc<Self>,
            mut stream: Stream,
            _shutdown: &ShutdownWatch,
        ) -> Option<Stream> {
            let _ = stream.write_all(b"hi").await;
            None
        }
    }

    /// Rewrites the sidecar's file with a TCP service `db` on dedicated `port` (or without it).
    fn set_port(dir: &std::path::Path, port: Option<u16>) {
        let config = dir.join("sidecar.yaml");
        let mut text = std::fs::read_to_string(&config).expect("read");
        if let Some(at) = text.find("services:") {
            text.truncate(at);
        }
        if let Some(port) = port {
            text.push_str(&format!(
                "services:\n  - name: db\n    identity: spiffe://weft.local/ns/default/sa/db\n    \
                 protocol: tcp\n    port: {port}\n    endpoints: [{{address: \"127.0.0.1:9\"}}]\n"
            ));
        }
        std::fs::write(&config, text).expect("write");
    }

    /// A port nothing listens on now.
    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    /// Whether a connection to `port` gets the app's `hi` (async: the manager runs on this
    /// same thread).
    async fn answers(port: u16) -> bool {
        use tokio::io::AsyncReadExt;
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return false;
        };
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.is_ok() && &buf == b"hi"
    }

    /// Puts `db` on `port` (or removes it), reloads and lets the manager take its turn.
    async fn reload_with(dir: &std::path::Path, store: &Store, port: Option<u16>) {
        set_port(dir, port);
        store.reload().expect("reload");
        settle().await;
    }

    /// Lets the manager's task (on this same thread) take its turn.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    async fn refused(port: u16) -> bool {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn binds_on_the_swap_retries_a_taken_port_and_closes_a_removed_one() {
        let (dir, store, _ca) = store_with_files(11);
        let store = Arc::new(store);
        let manager = PortManager::new(store.clone(), Arc::new(Hi), BTreeSet::new());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { manager.start(shutdown).await });
        // Its first pass (nothing to bind) done, so what follows tests the wake-up.
        settle().await;

        // Added by a reload: bound on the swap itself (the clock is paused: no polling period passes).
        let port = free_port();
        let t0 = tokio::time::Instant::now();
        reload_with(dir.path(), &store, Some(port)).await;
        assert!(answers(port).await, "bound after the reload");
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "bound without waiting for a timer"
        );

        // Removed: closed (nothing listens any more).
        let t0 = tokio::time::Instant::now();
        reload_with(dir.path(), &store, None).await;
        assert!(refused(port).await, "closed after the removal");
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "closed without waiting for a timer"
        );

        // Taken by someone else: refused, then bound by the retry once it is free again.
        let holder = std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold");
        reload_with(dir.path(), &store, Some(port)).await;
        drop(holder);
        assert!(
            refused(port).await,
            "the manager could not have bound a port that was taken"
        );
        tokio::time::sleep(BIND_RETRY + Duration::from_millis(50)).await;
        assert!(answers(port).await, "bound by the retry");

        stop.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops on shutdown")
            .expect("no panic");
    }
}
