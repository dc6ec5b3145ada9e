//! Where a sidecar stream's next messages wait: the latest message of each resource (the
//! snapshot, and with "endpoints-by-service" each subscribed service's endpoints), never a
//! queue of superseded ones. A slow sidecar costs at most one pending message per resource;
//! a stream that has not yet taken a snapshot when a newer one is pushed gets only the newer.
//!
//! The push ([`crate::push::hub`]) puts messages in with [`Slot::put`]; the stream
//! ([`crate::push::push_stream`]) takes them out in resource order (the snapshot, key `""`,
//! before any endpoints) through [`SlotReceiver`]. Dropping the [`Slot`] ends the stream once
//! what is pending has been taken.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;
use weft_api::v1::ControlMessage;

/// One message for a sidecar stream.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    /// A snapshot; its JSON is shared between the service's sidecars and framed per stream
    /// without a copy ([`crate::push::push_stream`]).
    Snapshot(ControlMessage),
    /// A whole gRPC message (5-byte prefix and the encoded `ControlMessage`), encoded once
    /// and shared by every stream it is sent on.
    Encoded(Bytes),
}

impl Outgoing {
    /// The message itself (decoding an [`Outgoing::Encoded`] copy); for the tonic path and
    /// tests.
    pub(crate) fn message(&self) -> Option<ControlMessage> {
        match self {
            Outgoing::Snapshot(m) => Some(m.clone()),
            Outgoing::Encoded(b) => ControlMessage::decode(b.get(5..)?).ok(),
        }
    }

    /// Bytes this message puts on the stream (gRPC framing included; HTTP/2 and TLS not).
    pub(crate) fn wire_len(&self) -> usize {
        match self {
            Outgoing::Snapshot(m) => 5 + m.encoded_len(),
            Outgoing::Encoded(b) => b.len(),
        }
    }
}

/// `msg` as a whole gRPC message: uncompressed flag, big-endian length, the message.
pub(crate) fn encode_framed(msg: &ControlMessage) -> Option<Bytes> {
    let body = msg.encode_to_vec();
    let len = u32::try_from(body.len()).ok()?;
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Some(Bytes::from(out))
}

type Pending = Arc<Mutex<BTreeMap<String, Outgoing>>>;

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, BTreeMap<String, Outgoing>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The push's end of a stream's slot.
#[derive(Debug)]
pub(crate) struct Slot {
    tick: watch::Sender<u64>,
    pending: Pending,
}

/// The stream's end: yields each message put in, the latest per resource.
pub(crate) struct SlotReceiver {
    ticks: WatchStream<u64>,
    pending: Pending,
    ready: VecDeque<Outgoing>,
}

/// A new slot and its receiver.
pub(crate) fn slot() -> (Slot, SlotReceiver) {
    let (tick, rx) = watch::channel(0);
    let pending = Pending::default();
    let receiver = SlotReceiver {
        ticks: WatchStream::from_changes(rx),
        pending: pending.clone(),
        ready: VecDeque::new(),
    };
    (Slot { tick, pending }, receiver)
}

impl Slot {
    /// Put `msg` as resource `key`'s next message, replacing one not yet taken. False when
    /// the stream is gone.
    pub(crate) fn put(&self, key: &str, msg: Outgoing) -> bool {
        if self.tick.is_closed() {
            return false;
        }
        lock(&self.pending).insert(key.to_owned(), msg);
        self.tick.send_modify(|n| *n = n.wrapping_add(1));
        true
    }
}

impl SlotReceiver {
    /// Everything pending now, in resource order, without waiting (tests).
    #[cfg(test)]
    pub(crate) fn take_now(&mut self) -> Vec<Outgoing> {
        let mut out: Vec<Outgoing> = self.ready.drain(..).collect();
        out.extend(std::mem::take(&mut *lock(&self.pending)).into_values());
        out
    }
}

impl Stream for SlotReceiver {
    type Item = Outgoing;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        let this = self.get_mut();
        loop {
            if let Some(m) = this.ready.pop_front() {
                return Poll::Ready(Some(m));
            }
            let tick = std::task::ready!(Pin::new(&mut this.ticks).poll_next(cx));
            let taken = std::mem::take(&mut *lock(&this.pending));
            if taken.is_empty() && tick.is_none() {
                return Poll::Ready(None);
            }
            this.ready.extend(taken.into_values());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;
    use weft_api::v1::{control_message, Endpoints};

    fn endpoints(service: &str, version: &str) -> Outgoing {
        let msg = ControlMessage {
            kind: Some(control_message::Kind::Endpoints(Endpoints {
                service: service.into(),
                version: version.into(),
                endpoints: vec![],
            })),
        };
        Outgoing::Encoded(encode_framed(&msg).expect("small"))
    }

    fn version(o: &Outgoing) -> String {
        match o.message().and_then(|m| m.kind) {
            Some(control_message::Kind::Endpoints(e)) => format!("{}@{}", e.service, e.version),
            other => panic!("not endpoints: {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_latest_of_each_resource_is_taken_in_order_and_the_end_after_them() {
        let (tx, mut rx) = slot();
        assert!(tx.put("endpoints/b", endpoints("b", "1")));
        assert!(tx.put("endpoints/a", endpoints("a", "1")));
        assert!(tx.put("endpoints/b", endpoints("b", "2")));
        let got: Vec<String> = (&mut rx).take(2).map(|o| version(&o)).collect().await;
        assert_eq!(got, ["a@1", "b@2"]);
        assert!(tx.put("endpoints/a", endpoints("a", "3")));
        drop(tx);
        assert_eq!(rx.next().await.map(|o| version(&o)).as_deref(), Some("a@3"));
        assert!(rx.next().await.is_none(), "ends once the slot is dropped");
    }

    #[test]
    fn a_put_on_a_gone_stream_fails() {
        let (tx, rx) = slot();
        drop(rx);
        assert!(!tx.put("", endpoints("a", "1")));
    }
}
