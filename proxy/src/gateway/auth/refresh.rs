//! The JWT providers' refresh loops, one task per key cache, kept in step with the config in
//! force: the gateway's reloader ([`crate::gateway::reload`]) starts the loops at start and,
//! after each reload, stops those of providers gone and starts those of providers added (an
//! unchanged provider keeps its cache and its loop).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::jwks::KeyCache;
use super::AuthStage;

/// The running refresh loops.
#[derive(Default)]
pub struct KeyTasks {
    running: Vec<(Arc<KeyCache>, JoinHandle<()>)>,
}

impl KeyTasks {
    /// Fetch once the keys of each cache of `stage` that has no loop yet, so that a provider
    /// a reload adds has keys before its first token (failures are logged; the loop retries).
    pub async fn prefetch(&self, stage: &AuthStage) {
        for (cache, _) in stage.caches() {
            if !self.has(&cache) {
                if let Err(e) = cache.refresh().await {
                    log::warn!("jwt keys not fetched yet: {e}");
                }
            }
        }
    }

    /// Run exactly the loops `stage` needs, on the current runtime; `fetched` says whether
    /// new caches were already fetched once ([`KeyTasks::prefetch`]).
    pub fn follow(&mut self, stage: &AuthStage, fetched: bool) {
        let wanted = stage.caches();
        self.running.retain(|(cache, task)| {
            let keep = wanted.iter().any(|(c, _)| Arc::ptr_eq(c, cache));
            if !keep {
                task.abort();
            }
            keep
        });
        for (cache, every) in wanted {
            if !self.has(&cache) {
                let task = tokio::spawn(run(Arc::clone(&cache), every, fetched));
                self.running.push((cache, task));
            }
        }
    }

    /// Stop every loop (shutdown).
    pub fn stop(&mut self) {
        for (_, task) in self.running.drain(..) {
            task.abort();
        }
    }

    fn has(&self, cache: &Arc<KeyCache>) -> bool {
        self.running.iter().any(|(c, _)| Arc::ptr_eq(c, cache))
    }
}

async fn run(cache: Arc<KeyCache>, every: Duration, fetched: bool) {
    if !fetched {
        // Until this first fetch lands, the provider's tokens get 401.
        let _ = cache.refresh().await;
    }
    cache.refresh_every(every).await;
}
