//! The sidecars' `Stream` method served without tonic's message encoder, so that a service's
//! snapshot JSON reaches all of its sidecars without a copy per stream.
//!
//! Tonic encodes every response message into a buffer of the stream's own and keeps that
//! buffer, as large as the largest message, for the stream's life: with a thousand sidecars
//! and snapshots that list every endpoint of the mesh, those copies were most of the control
//! plane's memory. Here each snapshot is sent as two body frames: a small head (the gRPC
//! message prefix, the version, the trust bundle and the key and length of the JSON field),
//! then the JSON itself, the [`Bytes`] the push built once for the service. The receiver
//! decodes one ordinary `ControlMessage`: protobuf allows fields in any order.
//!
//! Everything else (the `Hello` checks, registration, ACKs) is [`crate::push::grpc::open_stream`],
//! the same code tonic's `stream` method runs; other methods go to tonic unchanged.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message as _;
use tokio_stream::Stream as _;
use tonic::codec::Codec as _;
use tonic::server::NamedService;
use tonic::Status;
use tower_service::Service;
use weft_api::v1::{control_message, ControlMessage, SidecarMessage, Snapshot};

use crate::push::grpc::{open_stream, PeerIdentity};
use crate::push::hub::Hub;
use crate::push::slot::{Outgoing, SlotReceiver};

/// The path of `weft.control.v1.ControlPlane/Stream`.
const STREAM_PATH: &str = "/weft.control.v1.ControlPlane/Stream";
/// Largest sidecar message accepted (tonic's default).
const MAX_DECODING_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

/// Serves `Stream` itself and passes every other request to `inner` (the tonic service).
#[derive(Clone)]
pub(crate) struct PushRouter<S> {
    hub: Arc<Hub>,
    inner: S,
}

impl<S> PushRouter<S> {
    pub(crate) fn new(hub: Arc<Hub>, inner: S) -> Self {
        PushRouter { hub, inner }
    }
}

impl<S: NamedService> NamedService for PushRouter<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<tonic::body::Body>> for PushRouter<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != STREAM_PATH {
            // The instance that was polled ready serves the call; a clone takes its place.
            let clone = self.inner.clone();
            let mut ready = std::mem::replace(&mut self.inner, clone);
            return Box::pin(ready.call(req));
        }
        let hub = self.hub.clone();
        Box::pin(async move { Ok(serve_stream(hub, req).await) })
    }
}

async fn serve_stream(
    hub: Arc<Hub>,
    req: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let (peer, from) = req
        .extensions()
        .get::<PeerIdentity>()
        .map_or((None, None), |p| (p.0.clone(), p.2));
    let decoder = tonic_prost::ProstCodec::<ControlMessage, SidecarMessage>::default().decoder();
    let inbound = tonic::Streaming::new_request(
        decoder,
        req.into_body(),
        None,
        Some(MAX_DECODING_MESSAGE_SIZE),
    );
    match open_stream(hub, peer, from, inbound).await {
        Ok(rx) => {
            let body = SnapshotBody {
                snapshots: rx,
                json: None,
                ended: false,
            };
            let mut res = http::Response::new(tonic::body::Body::new(body));
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                tonic::metadata::GRPC_CONTENT_TYPE,
            );
            res
        }
        Err(status) => status.into_http(),
    }
}

/// The response body: each snapshot put in the stream's slot as a head frame and the shared
/// JSON frame; `grpc-status: 0` when the control plane ends the stream.
struct SnapshotBody {
    snapshots: SlotReceiver,
    /// The JSON of the snapshot whose head was just sent.
    json: Option<Bytes>,
    ended: bool,
}

impl http_body::Body for SnapshotBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(json) = this.json.take() {
            return Poll::Ready(Some(Ok(Frame::data(json))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match ready!(Pin::new(&mut this.snapshots).poll_next(cx)) {
                Some(Outgoing::Snapshot(msg)) => match encode_split(&msg) {
                    Some((head, json)) => {
                        this.json = Some(json);
                        return Poll::Ready(Some(Ok(Frame::data(head))));
                    }
                    None => log::error!("a control message could not be framed; skipped"),
                },
                // Encoded once for every stream it goes to.
                Some(Outgoing::Encoded(framed)) => {
                    return Poll::Ready(Some(Ok(Frame::data(framed))))
                }
                None => {
                    this.ended = true;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert(Status::GRPC_STATUS, http::HeaderValue::from_static("0"));
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.json.is_none()
    }
}

/// A snapshot message as a gRPC length-prefixed message in two parts: everything up to the
/// JSON, and the JSON (shared, not copied). `None` for a message that is not a snapshot or
/// is over 4 GiB.
fn encode_split(msg: &ControlMessage) -> Option<(Bytes, Bytes)> {
    let Some(control_message::Kind::Snapshot(s)) = &msg.kind else {
        return None;
    };
    let json = s.policy_json.clone();
    // Fields 1 and 3 (an empty bytes field is not encoded), then field 2's key and length.
    let mut snapshot = Snapshot {
        policy_json: Bytes::new(),
        ..s.clone()
    }
    .encode_to_vec();
    encode_key(2, WireType::LengthDelimited, &mut snapshot);
    encode_varint(json.len() as u64, &mut snapshot);
    let snapshot_len = snapshot.len() + json.len();
    // ControlMessage field 1 (the snapshot).
    let mut outer = Vec::with_capacity(16);
    encode_key(1, WireType::LengthDelimited, &mut outer);
    encode_varint(snapshot_len as u64, &mut outer);
    let message_len = u32::try_from(outer.len() + snapshot_len).ok()?;
    let mut head = Vec::with_capacity(5 + outer.len() + snapshot.len());
    head.push(0); // not compressed
    head.extend_from_slice(&message_len.to_be_bytes());
    head.extend_from_slice(&outer);
    head.extend_from_slice(&snapshot);
    Some((Bytes::from(head), json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_parts_decode_as_the_message() {
        let json = Bytes::from(vec![b'x'; 70_000]);
        let msg = ControlMessage {
            kind: Some(control_message::Kind::Snapshot(Snapshot {
                version: "0123456789abcdef".into(),
                policy_json: json.clone(),
                trust_bundle_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
                endpoints_separate: true,
            })),
        };
        let (head, tail) = encode_split(&msg).expect("a snapshot");
        assert_eq!(head[0], 0);
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        assert_eq!(len, head.len() - 5 + tail.len());
        // The JSON is the push's buffer itself.
        assert_eq!(tail.as_ptr(), json.as_ptr());
        let mut whole = head[5..].to_vec();
        whole.extend_from_slice(&tail);
        assert_eq!(ControlMessage::decode(&whole[..]).expect("decodes"), msg);
        assert!(encode_split(&ControlMessage { kind: None }).is_none());
    }
}
