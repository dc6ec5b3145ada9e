//! [`KubeSource`]: the mesh policy from the Kubernetes API, behind the same
//! [`PolicySource`] trait as the policy directory.
//!
//! Reflectors (`kube::runtime`: list, then watch; a closed watch resumes from the last
//! resource version, and `410 Gone` relists) keep Services, EndpointSlices, Pods and the
//! three policy resources of every namespace in memory. [`PolicySource::load`] maps what they
//! hold ([`super::mapping`]) and writes each policy resource's `Accepted` condition back with
//! a status patch when it changes. [`PolicySource::watch`] calls back, debounced, after any
//! change.
//!
//! The trait is synchronous and its callers are too (the server reloads on a blocking
//! thread), so the client and reflectors run on a runtime of their own, on a thread of their
//! own: nothing here ever blocks a Tokio worker of the caller's runtime.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::kube::api::DynamicObject;
use ::kube::runtime::reflector::{self, Store};
use ::kube::Client;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::crds::{AuthorizationPolicy, Condition, GatewayPolicy, MeshRoute, TrafficPolicy};
use super::gateway_api;
use super::gateways;
use super::last_good::LastGood;
use super::mapping::{self, Kind, ObjectKey, Objects};
pub use super::options::{KubeError, KubeOptions};
use super::pods::KubePods;
use super::reflect::{reflect, reflect_resource, reflect_untyped, served, wait, Subscribers};
use super::status_write;
use crate::policy::mesh::{MeshPolicy, PolicyErrors};
use crate::policy::source::{PolicySource, Watch};

/// The name the Kubernetes policy goes by in history (one YAML document).
pub const POLICY_DOCUMENT: &str = "kubernetes.yaml";

/// The object stores the reflectors keep.
#[derive(Clone)]
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    // The policy resources untyped: one that does not parse must not fail the whole list.
    routes: Store<DynamicObject>,
    traffic: Store<DynamicObject>,
    authz: Store<DynamicObject>,
    // Gateway API kinds: empty stores when the API server does not serve them.
    http_routes: Store<DynamicObject>,
    grpc_routes: Store<DynamicObject>,
    grants: Store<DynamicObject>,
    gateway_classes: Store<DynamicObject>,
    gateways: Store<DynamicObject>,
    /// `GatewayPolicy`s: an empty store when the CRD is not installed.
    gateway_policies: Store<DynamicObject>,
    /// `None` when not read.
    secrets: Option<Store<Secret>>,
}

/// A status to write on one resource: the merge patch's `status`, and for a policy resource
/// the condition it carries (forgotten when the write fails, so the next load tries again).
struct StatusWrite {
    key: ObjectKey,
    status: serde_json::Value,
}

/// What the watcher thread hands over once synced: the stores, the status writer's queue and
/// the API server's URL.
type Started = (Stores, tmpsc::UnboundedSender<StatusWrite>, String);

/// The condition last sent per policy resource.
type SentConditions = Arc<Mutex<HashMap<ObjectKey, Condition>>>;
/// The status last sent per Gateway API route.
type SentRouteStatus = Arc<Mutex<HashMap<ObjectKey, serde_json::Value>>>;

/// The mesh policy from the Kubernetes API.
pub struct KubeSource {
    stores: Stores,
    trust_domain: String,
    server: String,
    debounce: Duration,
    subscribers: Subscribers,
    status: tmpsc::UnboundedSender<StatusWrite>,
    /// The condition last sent per resource (sent, not yet seen back in the store), so an
    /// unchanged verdict is not patched again on every load.
    sent: Arc<Mutex<HashMap<ObjectKey, Condition>>>,
    /// The route status last sent per HTTPRoute and GRPCRoute, likewise.
    sent_routes: Arc<Mutex<HashMap<ObjectKey, serde_json::Value>>>,
    /// The status last sent per Gateway and GatewayClass, likewise (forgotten on a failed
    /// write with the routes').
    sent_gateways: SentRouteStatus,
    gateway_dir: Option<PathBuf>,
    gateways: gateways::GatewayBoard,
    /// The verdicts last logged, so each rejection is logged once.
    logged: Mutex<HashMap<ObjectKey, String>>,
    /// Each resource's last accepted version, in force while an edit of it is invalid.
    last_good: LastGood,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("server", &self.server)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl KubeSource {
    /// Connect, start watching every kind, and wait until each has been listed once (so the
    /// first [`load`](PolicySource::load) sees the whole cluster, never a part of it). Blocks
    /// the calling thread: call it from a blocking context.
    pub fn connect(options: KubeOptions) -> Result<Self, KubeError> {
        let subscribers: Subscribers = Arc::new(Mutex::new(Vec::new()));
        let sent: Arc<Mutex<HashMap<ObjectKey, Condition>>> = Arc::default();
        let sent_routes: SentRouteStatus = Arc::default();
        let sent_gateways: SentRouteStatus = Arc::default();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread = {
            let subscribers = subscribers.clone();
            let sent = (sent.clone(), sent_routes.clone(), sent_gateways.clone());
            let options = options.clone();
            std::thread::Builder::new()
                .name("weft-kube".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(KubeError::Start(e.to_string())));
                            return;
                        }
                    };
                    rt.block_on(run(options, subscribers, sent, ready_tx, shutdown_rx));
                })
                .map_err(|e| KubeError::Start(e.to_string()))?
        };
        let started = ready_rx
            .recv()
            .map_err(|_| KubeError::Start("the watcher thread ended".into()))
            .and_then(|r| r);
        let (stores, status, server) = match started {
            Ok(s) => s,
            Err(e) => {
                let _ = shutdown.send(());
                let _ = thread.join();
                return Err(e);
            }
        };
        Ok(KubeSource {
            stores,
            trust_domain: options.trust_domain,
            server,
            debounce: options.debounce,
            subscribers,
            status,
            sent,
            sent_routes,
            sent_gateways,
            gateway_dir: options.gateway_dir,
            gateways: options.gateways,
            logged: Mutex::new(HashMap::new()),
            last_good: LastGood::default(),
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The pods this source watches, as the push asks who owns an endpoint's address.
    pub fn pods(&self) -> KubePods {
        KubePods::new(self.stores.pods.clone())
    }

    /// The objects the stores hold now.
    pub fn objects(&self) -> Objects {
        fn all<K>(s: &Store<K>) -> Vec<K>
        where
            K: ::kube::Resource + Clone + 'static,
            K::DynamicType: std::hash::Hash + Eq + Clone,
        {
            s.state().iter().map(|o| (**o).clone()).collect()
        }
        Objects {
            services: all(&self.stores.services),
            endpoint_slices: all(&self.stores.slices),
            pods: all(&self.stores.pods),
            routes: all(&self.stores.routes),
            traffic_policies: all(&self.stores.traffic),
            authorization: all(&self.stores.authz),
            http_routes: all(&self.stores.http_routes),
            grpc_routes: all(&self.stores.grpc_routes),
            reference_grants: all(&self.stores.grants),
            gateway_classes: all(&self.stores.gateway_classes),
            gateways: all(&self.stores.gateways),
            gateway_policies: all(&self.stores.gateway_policies),
            secrets: self.stores.secrets.as_ref().map(all),
        }
    }

    /// Queue the route status writes `mapped` calls for (GAMMA parents) and those of the
    /// north-south translation (Gateway parents, Gateways, GatewayClasses), and write the
    /// gateway files.
    fn write_route_statuses(&self, objects: &Objects, mapped: &mapping::Mapped) {
        let ns = gateways::translate(objects, &mapped.mesh.services);
        let mut verdicts = mapped.gamma.clone();
        verdicts.extend(ns.verdicts.iter().cloned());
        let now = crate::operator::history::now_rfc3339();
        let mut sent = self.sent_routes.lock().unwrap_or_else(|e| e.into_inner());
        for (key, status) in gateway_api::status::pending(objects, &verdicts, &mut sent, &now) {
            let _ = self.status.send(StatusWrite { key, status });
        }
        let (classes, gws) = (&objects.gateway_classes, &objects.gateways);
        let mut sent = self.sent_gateways.lock().unwrap_or_else(|e| e.into_inner());
        for (key, status) in
            gateway_api::gateway_status::pending(&ns, classes, gws, &mut sent, &now)
        {
            let _ = self.status.send(StatusWrite { key, status });
        }
        let policies = &objects.gateway_policies;
        for (key, status) in
            gateway_api::policy_status::pending(&ns.policies, policies, &mut sent, &now)
        {
            let _ = self.status.send(StatusWrite { key, status });
        }
        self.gateways.publish(gateways::messages(&ns));
        if let Some(dir) = &self.gateway_dir {
            for (key, result) in gateways::write_configs(dir, &ns) {
                match result {
                    Ok(true) => log::info!("gateway config of {key} written"),
                    Ok(false) => {}
                    Err(e) => log::warn!("writing the gateway config of {key}: {e}"),
                }
            }
        }
    }

    /// Queue the status writes `mapped` calls for: a resource whose `Accepted` condition (as
    /// the store has it, or as last sent) already says the same is left alone.
    fn write_statuses(&self, objects: &Objects, mapped: &mapping::Mapped) {
        let mut current: HashMap<ObjectKey, Option<Condition>> = HashMap::new();
        for (kind, list) in [
            (Kind::MeshRoute, &objects.routes),
            (Kind::TrafficPolicy, &objects.traffic_policies),
            (Kind::AuthorizationPolicy, &objects.authorization),
        ] {
            for o in list {
                let key = ObjectKey {
                    kind,
                    namespace: o.metadata.namespace.clone().unwrap_or_default(),
                    name: o.metadata.name.clone().unwrap_or_default(),
                };
                current.insert(key, mapping::accepted_condition(o));
            }
        }
        let now = crate::operator::history::now_rfc3339();
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        // Forget resources that are gone, so one recreated under the same name gets its
        // condition.
        sent.retain(|k, _| current.contains_key(k));
        for v in &mapped.verdicts {
            let Some(previous) = current.get(&v.key) else {
                continue; // a Service: nothing to write on it
            };
            let wanted = v.condition(previous.as_ref(), &now);
            let same = |c: &Condition| {
                c.status == wanted.status
                    && c.reason == wanted.reason
                    && c.message == wanted.message
                    && c.observed_generation == wanted.observed_generation
            };
            if previous.as_ref().is_some_and(same) {
                sent.remove(&v.key);
                continue;
            }
            if sent.get(&v.key).is_some_and(same) {
                continue;
            }
            sent.insert(v.key.clone(), wanted.clone());
            let _ = self.status.send(StatusWrite {
                key: v.key.clone(),
                status: serde_json::json!({ "conditions": [wanted] }),
            });
        }
    }

    /// Log each verdict that left something out, once while it stands.
    fn log_rejections(&self, mapped: &mapping::Mapped) {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let mut now = HashMap::new();
        for v in mapped.rejected() {
            let line = v.to_string();
            if logged.get(&v.key) != Some(&line) {
                log::warn!("policy: left out {line}");
            }
            now.insert(v.key.clone(), line);
        }
        for k in logged.keys() {
            if !now.contains_key(k) {
                log::info!("policy: {k} is accepted again, or gone");
            }
        }
        *logged = now;
    }
}

impl PolicySource for KubeSource {
    fn load(&self) -> Result<MeshPolicy, PolicyErrors> {
        let objects = self.objects();
        let mapped = self.last_good.map(&objects, &self.trust_domain);
        self.log_rejections(&mapped);
        self.write_statuses(&objects, &mapped);
        self.write_route_statuses(&objects, &mapped);
        MeshPolicy::from_mesh(POLICY_DOCUMENT, mapped.mesh)
    }

    fn watch(&self, on_change: Box<dyn Fn() + Send>) -> io::Result<Watch> {
        let (events_tx, events) = mpsc::channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(events_tx);
        let (stop, stopped) = mpsc::channel::<()>();
        let debounce = self.debounce;
        let thread = std::thread::Builder::new()
            .name("weft-kube-watch".into())
            .spawn(move || loop {
                // A message or a dropped sender both mean stop.
                if !matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                    return;
                }
                match events.recv_timeout(Duration::from_millis(50)) {
                    Ok(()) => {
                        // Gather the burst (a relist is many events), then call back once.
                        let until = Instant::now() + debounce;
                        while let Some(left) = until.checked_duration_since(Instant::now()) {
                            if events.recv_timeout(left).is_err() {
                                break;
                            }
                        }
                        on_change();
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(Watch::from_thread(stop, thread))
    }

    fn describe(&self) -> String {
        format!("Kubernetes API {}", self.server)
    }
}

/// The watcher thread's life: connect, start the reflectors, report ready (or why not), write
/// statuses, until shut down.
// Long (about 100 lines) because it is one `select!` loop over the reflectors, the
// subscribers and the status writes, whose arms share the loop's state.
async fn run(
    options: KubeOptions,
    subscribers: Subscribers,
    sent: (SentConditions, SentRouteStatus, SentRouteStatus),
    ready: mpsc::Sender<Result<Started, KubeError>>,
    shutdown: oneshot::Receiver<()>,
) {
    let config = super::client_config(options.kubeconfig.as_deref())
        .await
        .map_err(KubeError::Config);
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let server = config.cluster_url.to_string();
    let client = match Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(KubeError::Client(e.to_string())));
            return;
        }
    };
    let mut tasks = Vec::new();
    let (services, t) = reflect::<Service>(&client, &subscribers);
    tasks.push(t);
    let (slices, t) = reflect::<EndpointSlice>(&client, &subscribers);
    tasks.push(t);
    let (pods, t) = reflect::<Pod>(&client, &subscribers);
    tasks.push(t);
    let (routes, t) = reflect_untyped::<MeshRoute>(&client, &subscribers);
    tasks.push(t);
    let (traffic, t) = reflect_untyped::<TrafficPolicy>(&client, &subscribers);
    tasks.push(t);
    let (authz, t) = reflect_untyped::<AuthorizationPolicy>(&client, &subscribers);
    tasks.push(t);
    // The Gateway API kinds are optional, each on its own (GRPCRoute is missing from older
    // releases' standard channel): a kind the API server does not serve stays an empty store.
    let mut gateway = Vec::new();
    for resource in [
        gateway_api::http_routes(),
        gateway_api::grpc_routes(),
        gateway_api::reference_grants(),
        gateway_api::gateway_classes(),
        gateway_api::gateways(),
    ] {
        if served(&client, &resource).await {
            let (store, t) = reflect_resource(&client, &subscribers, resource);
            tasks.push(t);
            gateway.push((store, true));
        } else {
            log::info!(
                "the API server does not serve {}.{}: not read (restart the control plane \
                 after installing the Gateway API CRDs)",
                resource.plural,
                gateway_api::GROUP
            );
            let empty = reflector::store::Writer::<DynamicObject>::new(resource).as_reader();
            gateway.push((empty, false));
        }
    }
    // GatewayPolicy is Weft's, but newer than the other CRDs: optional too, so a control
    // plane upgraded before its CRDs still starts.
    let policy_resource = ::kube::api::ApiResource::erase::<GatewayPolicy>(&());
    let (gateway_policies, policies_served) = if served(&client, &policy_resource).await {
        let (store, t) = reflect_resource(&client, &subscribers, policy_resource);
        tasks.push(t);
        (store, true)
    } else {
        log::info!(
            "the API server does not serve gatewaypolicies.weft.dev: not read (apply \
             deploy/kubernetes/base/crds and restart the control plane)"
        );
        let empty = reflector::store::Writer::<DynamicObject>::new(policy_resource).as_reader();
        (empty, false)
    };
    let served_kinds: Vec<bool> = gateway.iter().map(|(_, s)| *s).collect();
    let mut gateway = gateway.into_iter().map(|(store, _)| store);
    let (Some(http_routes), Some(grpc_routes), Some(grants), Some(gateway_classes), Some(gws)) = (
        gateway.next(),
        gateway.next(),
        gateway.next(),
        gateway.next(),
        gateway.next(),
    ) else {
        // Five in, five out: never taken.
        let _ = ready.send(Err(KubeError::Start("the Gateway API stores".into())));
        return;
    };
    // Secrets only for Gateways' certificates: not read without the Gateway kind, nor
    // when the control plane may not list them (RBAC: an opt-in rule).
    let secrets = if served_kinds[4] && gateways::secrets_readable(&client).await {
        let (store, t) = reflect::<Secret>(&client, &subscribers);
        tasks.push(t);
        Some(store)
    } else {
        None
    };
    let stores = Stores {
        services,
        slices,
        pods,
        routes,
        traffic,
        authz,
        http_routes,
        grpc_routes,
        grants,
        gateway_classes,
        gateways: gws,
        gateway_policies,
        secrets,
    };

    let synced = async {
        let waits: [(&str, BoxFuture<'_, ()>); 6] = [
            ("services", wait(&stores.services).boxed()),
            ("endpointslices", wait(&stores.slices).boxed()),
            ("pods", wait(&stores.pods).boxed()),
            ("meshroutes.weft.dev", wait(&stores.routes).boxed()),
            ("trafficpolicies.weft.dev", wait(&stores.traffic).boxed()),
            (
                "authorizationpolicies.weft.dev",
                wait(&stores.authz).boxed(),
            ),
        ];
        let gateway_waits: [(&str, BoxFuture<'_, ()>); 5] = [
            (
                "httproutes.gateway.networking.k8s.io",
                wait(&stores.http_routes).boxed(),
            ),
            (
                "grpcroutes.gateway.networking.k8s.io",
                wait(&stores.grpc_routes).boxed(),
            ),
            (
                "referencegrants.gateway.networking.k8s.io",
                wait(&stores.grants).boxed(),
            ),
            (
                "gatewayclasses.gateway.networking.k8s.io",
                wait(&stores.gateway_classes).boxed(),
            ),
            (
                "gateways.gateway.networking.k8s.io",
                wait(&stores.gateways).boxed(),
            ),
        ];
        let secrets = stores
            .secrets
            .as_ref()
            .map(|s| ("secrets", wait(s).boxed()));
        let policies = policies_served.then(|| {
            (
                "gatewaypolicies.weft.dev",
                wait(&stores.gateway_policies).boxed(),
            )
        });
        let gateway_waits = gateway_waits
            .into_iter()
            .zip(served_kinds)
            .filter_map(|(w, served)| served.then_some(w));
        let rest = gateway_waits.chain(secrets).chain(policies);
        for (name, w) in waits.into_iter().chain(rest) {
            if tokio::time::timeout_at(deadline(options.sync_timeout), w)
                .await
                .is_err()
            {
                return Err(KubeError::Sync(name.to_owned(), options.sync_timeout));
            }
        }
        Ok(())
    };
    if let Err(e) = synced.await {
        let _ = ready.send(Err(e));
        for t in tasks {
            t.abort();
        }
        return;
    }

    let (status_tx, mut status_rx) = tmpsc::unbounded_channel::<StatusWrite>();
    if ready.send(Ok((stores, status_tx, server))).is_err() {
        return;
    }
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(w) = status_rx.recv().await {
                if let Err(e) = status_write::write_status(&client, &w.key, &w.status).await {
                    log::warn!("writing the status of {}: {e}", w.key);
                    // Forget it, so the next load tries again.
                    sent.0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&w.key);
                    for s in [&sent.1, &sent.2] {
                        s.lock().unwrap_or_else(|e| e.into_inner()).remove(&w.key);
                    }
                }
            }
        })
    };
    tasks.push(writer);
    let _ = shutdown.await;
    for t in tasks {
        t.abort();
    }
}

fn deadline(after: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + after
}
