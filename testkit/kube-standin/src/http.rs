//! The HTTP side: authentication, paths to kinds and objects, the verbs, watch streams.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::select::{query, Selector};
use crate::store::{Filter, Part, State, Watcher, WATCH_BUFFER};
use crate::{ApiError, TOKEN};

/// Largest request body accepted (the API server's own limit is about 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// Longest a watch stays open unless `timeoutSeconds` says less.
const MAX_WATCH: Duration = Duration::from_secs(1800);

pub(crate) type Body = BoxBody<Bytes, Infallible>;
type Shared = Arc<Mutex<State>>;

pub(crate) fn reply(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a path names.
struct Target {
    kind: usize,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

/// `/api/v1/...` or `/apis/{group}/{version}/...`: (group, version, the rest).
fn split_prefix(path: &str) -> Option<(&str, &str, Vec<&str>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", v, rest @ ..] => Some(("", v, rest.to_vec())),
        ["apis", g, v, rest @ ..] => Some((g, v, rest.to_vec())),
        _ => None,
    }
}

fn target(st: &State, path: &str) -> Result<Target, ApiError> {
    let missing = || ApiError::not_found(format!("the server could not find {path}"));
    let (group, version, rest) = split_prefix(path).ok_or_else(missing)?;
    let (namespace, rest) = match rest.as_slice() {
        ["namespaces", ns, plural, tail @ ..] => {
            (Some((*ns).to_owned()), [&[*plural][..], tail].concat())
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_owned()), None),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return Err(missing()),
    };
    let kind = st.kind_at(group, version, plural).ok_or_else(missing)?;
    if namespace.is_some() && !st.kinds[kind].namespaced {
        return Err(missing());
    }
    Ok(Target {
        kind,
        namespace,
        name,
        sub,
    })
}

async fn body(req: Request<Incoming>) -> Result<Value, ApiError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("request body: {e} (at most {MAX_BODY} bytes)"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
}

/// Serves one request.
pub(crate) async fn handle(
    state: Shared,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    Ok(match route(&state, req).await {
        Ok(r) => r,
        Err(e) => e.response(),
    })
}

/// PATCH: a merge patch of the object or its status.
async fn patch(
    state: &Shared,
    req: Request<Incoming>,
    kind: usize,
    key: crate::store::Key,
    part: Part,
) -> Result<Response<Body>, ApiError> {
    let ctype = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // A strategic merge patch is taken as a merge patch: the same for the maps the tests
    // patch; lists would be replaced, not merged by key.
    if !matches!(
        ctype.as_str(),
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the stand-in takes merge patches, not {ctype:?}"),
        ));
    }
    let patch = body(req).await?;
    let patched = lock(state).patch(kind, key, &patch, part)?;
    Ok(reply(StatusCode::OK, &patched))
}

/// The caller's bearer token is [`TOKEN`] or a minted one for the API server.
fn authorized(state: &Shared, req: &Request<Incoming>) -> Result<(), ApiError> {
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bearer != TOKEN && !lock(state).bearer_allowed(bearer) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        ));
    }
    Ok(())
}

async fn route(state: &Shared, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    authorized(state, &req)?;
    let path = req.uri().path().to_owned();
    let q = query(req.uri().query()).ok_or_else(|| ApiError::bad_request("malformed query"))?;
    let method = req.method().clone();
    if path == "/version" {
        return Ok(reply(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-standin"}),
        ));
    }
    if path == "/apis/authentication.k8s.io/v1/tokenreviews" && method == Method::POST {
        let review = body(req).await?;
        let answer = lock(state).token_review(&review)?;
        return Ok(reply(StatusCode::CREATED, &answer));
    }
    let t = target(&lock(state), &path)?;
    let namespaced = lock(state).kinds[t.kind].namespaced;
    let key = |name: &str| (t.namespace.clone().unwrap_or_default(), name.to_owned());
    let part = match t.sub.as_deref() {
        None => Part::Main,
        Some("status") => Part::Status,
        Some("token") if method == Method::POST => Part::Main,
        Some(other) => return Err(ApiError::not_found(format!("no subresource {other}"))),
    };
    match (&method, t.name.as_deref()) {
        (&Method::GET, None) => list_or_watch(state, &t, &q),
        (&Method::GET, Some(name)) => {
            let mut st = lock(state);
            let plural = st.kinds[t.kind].plural.to_owned();
            *st.gets.entry(plural).or_default() += 1;
            Ok(reply(StatusCode::OK, &st.get(t.kind, &key(name))?))
        }
        (&Method::POST, None) if namespaced && t.namespace.is_none() => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "create in a namespace",
        )),
        (&Method::POST, None) => {
            let object = body(req).await?;
            let created = lock(state).create(t.kind, t.namespace.as_deref(), object, Part::Main)?;
            Ok(reply(StatusCode::CREATED, &created))
        }
        (&Method::POST, Some(name)) if t.sub.as_deref() == Some("token") => {
            if lock(state).kinds[t.kind].kind != "ServiceAccount" {
                return Err(ApiError::not_found("no subresource token".to_owned()));
            }
            let request = body(req).await?;
            let ns = t.namespace.clone().unwrap_or_default();
            let answer = lock(state).token_request(&ns, name, &request)?;
            Ok(reply(StatusCode::CREATED, &answer))
        }
        (&Method::PUT, Some(name)) => {
            let object = body(req).await?;
            let updated = lock(state).update(t.kind, key(name), object, part)?;
            Ok(reply(StatusCode::OK, &updated))
        }
        (&Method::PATCH, Some(name)) => patch(state, req, t.kind, key(name), part).await,
        (&Method::DELETE, Some(name)) => {
            let options = if q.contains_key("gracePeriodSeconds") {
                json!({"gracePeriodSeconds": q["gracePeriodSeconds"].parse::<i64>().unwrap_or(-1)})
            } else {
                body(req).await.unwrap_or(Value::Null)
            };
            let zero = options["gracePeriodSeconds"] == 0;
            let gone = lock(state).delete(t.kind, key(name), zero)?;
            Ok(reply(StatusCode::OK, &gone))
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path}"),
        )),
    }
}

fn filter(t: &Target, q: &std::collections::HashMap<String, String>) -> Result<Filter, ApiError> {
    let selector = |k: &str| {
        Selector::parse(q.get(k).map(String::as_str).unwrap_or_default())
            .map_err(ApiError::bad_request)
    };
    Ok(Filter {
        namespace: t.namespace.clone(),
        labels: selector("labelSelector")?,
        fields: selector("fieldSelector")?,
    })
}

fn list_or_watch(
    state: &Shared,
    t: &Target,
    q: &std::collections::HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let filter = filter(t, q)?;
    let mut st = lock(state);
    let spec = st.kinds[t.kind].clone();
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        *st.lists.entry(spec.plural.to_owned()).or_default() += 1;
        let items: Vec<Value> = st
            .list(t.kind, &filter)
            .into_iter()
            .map(|mut o| {
                if spec.builtin() {
                    if let Some(m) = o.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                }
                o
            })
            .collect();
        return Ok(reply(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", spec.kind),
                "apiVersion": spec.api_version(),
                "metadata": {"resourceVersion": st.rv.to_string()},
                "items": items
            }),
        ));
    }
    drop(st);
    watch(state, t, q, filter)
}

/// WATCH: history from `resourceVersion` (or the objects now), a bookmark, then the changes.
fn watch(
    state: &Shared,
    t: &Target,
    q: &std::collections::HashMap<String, String>,
    filter: Filter,
) -> Result<Response<Body>, ApiError> {
    let mut st = lock(state);
    let spec = st.kinds[t.kind].clone();
    *st.watches.entry(spec.plural.to_owned()).or_default() += 1;
    let from: Option<u64> = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("resourceVersion {v:?}")))
        })
        .transpose()?;
    let (tx, rx) = mpsc::channel::<Bytes>(WATCH_BUFFER);
    let mut initial = match from {
        Some(from) if from < st.compacted => vec![gone(st.rv)],
        Some(from) => st.events_since(t.kind, from, &filter),
        // No version: the current objects as ADDED, then the changes, as the API server does.
        None => st
            .list(t.kind, &filter)
            .iter()
            .map(|o| Bytes::from(format!("{}\n", json!({"type": "ADDED", "object": o}))))
            .collect(),
    };
    let expired = from.is_some_and(|f| f < st.compacted);
    if !expired {
        initial.push(Bytes::from(format!(
            "{}\n",
            json!({"type": "BOOKMARK", "object": {
                "kind": spec.kind, "apiVersion": spec.api_version(),
                "metadata": {"resourceVersion": st.rv.to_string()}
            }})
        )));
    }
    // More history than the buffer holds: this watcher starts too far behind, as a slow one.
    if initial.len() > WATCH_BUFFER {
        initial = vec![gone(st.rv)];
    }
    for line in initial {
        let _ = tx.try_send(line);
    }
    if !expired {
        st.watchers.push(Watcher {
            kind: t.kind,
            filter,
            tx,
        });
    }
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map_or(MAX_WATCH, Duration::from_secs)
        .min(MAX_WATCH);
    let stream = ReceiverStream::new(rx)
        .take_until(tokio::time::sleep(timeout))
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// The `ERROR` event of a watch from a compacted version.
pub(crate) fn gone(rv: u64) -> Bytes {
    Bytes::from(format!(
        "{}\n",
        json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: 1 ({rv})"),
            "reason": "Expired", "code": 410
        }})
    ))
}
