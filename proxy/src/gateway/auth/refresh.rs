//! The gateway's key refresher: a Pingora background service that loads every JWT provider's
//! keys at start and refreshes them on their intervals until shutdown.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::jwks::KeyCache;

/// Each provider's cache and refresh interval.
pub struct KeyRefresher(pub Vec<(Arc<KeyCache>, Duration)>);

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let tasks: Vec<_> = (self.0.iter())
            .map(|(cache, every)| {
                let (cache, every) = (Arc::clone(cache), *every);
                tokio::spawn(async move {
                    // Until this first fetch lands, the provider's tokens get 401.
                    let _ = cache.refresh().await;
                    cache.refresh_every(every).await;
                })
            })
            .collect();
        let _ = shutdown.changed().await;
        for t in tasks {
            t.abort();
        }
    }
}
