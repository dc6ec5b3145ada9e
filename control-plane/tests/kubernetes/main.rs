//! Kubernetes: the policy source (`source`), rendered manifests and Dockerfiles (`manifests`),
//! the gateway's Deployment and its gateway-file component (`gateway_manifests`),
//! sidecar bootstrap with service account tokens verified by TokenReview (`tokenreview`), and
//! sidecar injection (`inject`), policy tenancy (`tenancy`), the webhook's bounds
//! (`webhook_bounds`), the injected shop run as deployed on the pod runner's pods against the
//! control-plane binary (`deployed`; needs root and network namespaces), a canary by editing a
//! MeshRoute there (`canary`), an invalid MeshRoute edit that keeps the last good route in
//! force there (`invalid_route`), the mesh CA rotated there under load (`rotation`), a Job with
//! an injected sidecar there (`job`), the apps' probes through their sidecars there (`probes`), transparent capture as injected
//! there (`capture`),
//! the images built
//! from deploy/docker (`images`), and two control-plane replicas sharing their state through
//! the API (`replicas`), which operators change with the real `weftctl` (`ctl`); under load
//! from a client pod (`load`): a rolling update of orders (`rolling`) and one of two
//! control-plane replicas behind one Service address killed (`failover`). A gateway fed its
//! Gateway's config over the stream (`gateway_stream`), one on a hand-written gateway file
//! that takes its mesh services from the control plane (`gateway_file_joins`), and a JWT
//! GatewayPolicy on its route (`gateway_policy`). The control plane binary is started the same
//! way by each (`shared`).

mod canary;
mod capture;
mod ctl;
mod deployed;
mod failover;
mod gateway_api;
mod gateway_file_joins;
mod gateway_manifests;
mod gateway_policy;
mod gateway_stream;
mod images;
mod inject;
mod invalid_route;
mod job;
mod load;
mod manifests;
mod north_south;
mod probes;
mod replicas;
mod rolling;
mod rotation;
mod shared;
mod source;
mod tenancy;
mod tokenreview;
mod webhook_bounds;
