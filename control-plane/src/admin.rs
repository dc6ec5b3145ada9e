//! The operator API: plain HTTP on a loopback address.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::hub::Hub;

pub(crate) async fn serve_admin(listener: TcpListener, hub: Arc<Hub>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                log::warn!("admin accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let hub = hub.clone();
                    async move {
                        let (status, ctype, body) = match (req.method(), req.uri().path()) {
                            (&hyper::Method::GET, "/status") => {
                                (200, "application/json", format!("{:#}\n", hub.status()))
                            }
                            (&hyper::Method::GET, "/live") => (200, "text/plain", "live\n".into()),
                            (&hyper::Method::GET, "/metrics") => {
                                (200, "text/plain; version=0.0.4", hub.metrics())
                            }
                            _ => (
                                404,
                                "text/plain",
                                "not found; try GET /status or /metrics\n".into(),
                            ),
                        };
                        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() = hyper::StatusCode::from_u16(status)
                            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(ctype),
                        );
                        Ok::<_, Infallible>(r)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
