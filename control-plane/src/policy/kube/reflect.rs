//! The reflectors behind [`super::source::KubeSource`]: list, then watch, every object of a
//! kind into a store, telling the subscribers of each event; and whether the API server
//! serves an optional kind at all.

use std::sync::{mpsc, Arc, Mutex};

use ::kube::api::{ApiResource, DynamicObject};
use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::{watcher, WatchStreamExt};
use ::kube::{Api, Client, Resource};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

/// Subscribers of the policy source's `watch`, told of every store change.
pub(super) type Subscribers = Arc<Mutex<Vec<mpsc::Sender<()>>>>;

/// Resolves once `store` has its first complete list.
pub(super) async fn wait<K>(store: &Store<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    // An error means the writer is gone (the task ended): never ready, the timeout says so.
    if store.wait_until_ready().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A reflector over every `K` of the cluster, telling `subscribers` of each event.
pub(super) fn reflect<K>(
    client: &Client,
    subscribers: &Subscribers,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client.clone());
    (store, spawn_reflector(api, writer, subscribers.clone()))
}

/// A reflector over every `K` of the cluster as untyped objects.
pub(super) fn reflect_untyped<K>(
    client: &Client,
    subscribers: &Subscribers,
) -> (Store<DynamicObject>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()>,
{
    reflect_resource(client, subscribers, ApiResource::erase::<K>(&()))
}

/// A reflector over every object of `resource` as untyped objects.
pub(super) fn reflect_resource(
    client: &Client,
    subscribers: &Subscribers,
    resource: ApiResource,
) -> (Store<DynamicObject>, tokio::task::JoinHandle<()>) {
    let writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
    let store = writer.as_reader();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    (store, spawn_reflector(api, writer, subscribers.clone()))
}

/// Run `writer`'s reflector over `api`'s list and watch; every event (a relist's too) tells
/// the subscribers.
fn spawn_reflector<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    subscribers: Subscribers,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Send + Sync,
{
    let plural = api
        .resource_url()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    tokio::spawn(async move {
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        );
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    let mut subs = subscribers.lock().unwrap_or_else(|e| e.into_inner());
                    subs.retain(|s| s.send(()).is_ok());
                }
                // The watcher relists or rewatches by itself, with backoff.
                Err(e) => log::warn!("watching {plural}: {e}"),
            }
        }
    })
}

/// Whether the API server serves `resource` (a list of it does not answer 404): a kind of
/// optional CRDs. Any other answer counts as served, and the reflector's sync says the rest.
pub(super) async fn served(client: &Client, resource: &ApiResource) -> bool {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    !matches!(
        api.list(&::kube::api::ListParams::default().limit(1)).await,
        Err(::kube::Error::Api(e)) if e.code == 404
    )
}
