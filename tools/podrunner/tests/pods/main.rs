//! The pod runner's tests, one binary (they need root and network namespaces; without them
//! each fails saying why, unless `WEFT_NO_NETNS=1` skips explicitly): what a container sees
//! (`containers`), the capabilities it holds (`capabilities`), native-sidecar ordering, Jobs, restarts and grace periods (`lifecycle`), the
//! shop's apps calling each other by Service name (`shop`), pods living in the stand-in API
//! server with their EndpointSlices (`standin`), and that nothing is left behind (`cleanup`).

mod capabilities;
mod cleanup;
mod containers;
mod images;
mod lifecycle;
mod shop;
mod standin;
mod support;
