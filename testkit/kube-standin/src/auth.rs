//! Service account tokens: minted by TokenRequest (`POST .../serviceaccounts/{name}/token`, what
//! a kubelet does for a projected volume) and reviewed by TokenReview (`POST
//! /apis/authentication.k8s.io/v1/tokenreviews`), with the checks the API server makes:
//! known, unexpired, for one of the audiences asked, its service account and bound pod still
//! there (same uid).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::store::{now, Minted, State};
use crate::ApiError;

/// The audience of tokens the API server itself accepts (a TokenRequest without audiences
/// gets it), as in a cluster whose issuer is the default.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// Shortest `expirationSeconds` a TokenRequest may ask for, as on the API server.
pub const MIN_EXPIRATION: Duration = Duration::from_secs(600);
/// `expirationSeconds` when a TokenRequest gives none.
const DEFAULT_EXPIRATION: Duration = Duration::from_secs(3600);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl State {
    /// Mints a token for `namespace/service_account` (which must exist), for `audiences`,
    /// living `ttl`, bound to the pod `pod` (which must exist) when given.
    pub(crate) fn mint(
        &mut self,
        namespace: &str,
        service_account: &str,
        audiences: Vec<String>,
        ttl: Duration,
        pod: Option<&str>,
    ) -> Result<(String, SystemTime), ApiError> {
        let sa_kind = self
            .kind_named("ServiceAccount", None)
            .ok_or_else(|| ApiError::not_found("serviceaccounts are not served".to_owned()))?;
        let key = (namespace.to_owned(), service_account.to_owned());
        let sa = self.get(sa_kind, &key)?;
        let pod = match pod {
            Some(name) => {
                let pod_kind = self
                    .kind_named("Pod", None)
                    .ok_or_else(|| ApiError::not_found("pods are not served".to_owned()))?;
                let p = self.get(pod_kind, &(namespace.to_owned(), name.to_owned()))?;
                let uid = p["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
                Some((name.to_owned(), uid))
            }
            None => None,
        };
        let audiences = if audiences.is_empty() {
            vec![API_AUDIENCE.to_owned()]
        } else {
            audiences
        };
        let expires = SystemTime::now() + ttl;
        let exp = expires
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = json!({
            "iss": API_AUDIENCE,
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
            "aud": audiences,
            "exp": exp,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {
                "name": service_account, "uid": sa["metadata"]["uid"]}},
        });
        if let Some((name, uid)) = &pod {
            claims["kubernetes.io"]["pod"] = json!({"name": name, "uid": uid});
        }
        let mut signature = [0u8; 32];
        signature.iter_mut().for_each(|b| *b = fastrand::u8(..));
        let token = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256","kid":"standin"}"#),
            b64(claims.to_string().as_bytes()),
            b64(&signature)
        );
        let minted = Minted {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            service_account_uid: sa["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            audiences,
            expires,
            pod,
        };
        self.tokens.minted.insert(token.clone(), minted);
        Ok((token, expires))
    }

    /// `POST .../serviceaccounts/{name}/token`: a TokenRequest's answer.
    pub(crate) fn token_request(
        &mut self,
        namespace: &str,
        name: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let spec = &body["spec"];
        let audiences: Vec<String> = spec["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let seconds = spec["expirationSeconds"]
            .as_u64()
            .unwrap_or(DEFAULT_EXPIRATION.as_secs());
        if seconds < MIN_EXPIRATION.as_secs() || seconds > (1 << 32) {
            return Err(ApiError::invalid(format!(
                "spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration \
                 less than 10 minutes or more than 2^32 seconds"
            )));
        }
        let pod = match (
            &spec["boundObjectRef"]["kind"],
            &spec["boundObjectRef"]["name"],
        ) {
            (Value::Null, _) => None,
            (k, Value::String(n)) if k == "Pod" => Some(n.clone()),
            _ => {
                return Err(ApiError::invalid(
                    "spec.boundObjectRef: only Pods are supported",
                ))
            }
        };
        let (token, expires) = self.mint(
            namespace,
            name,
            audiences,
            Duration::from_secs(seconds),
            pod.as_deref(),
        )?;
        let mut answer = body.clone();
        answer["kind"] = json!("TokenRequest");
        answer["apiVersion"] = json!("authentication.k8s.io/v1");
        answer["metadata"] = json!({"name": name, "namespace": namespace,
                                    "creationTimestamp": now()});
        answer["spec"]["expirationSeconds"] = json!(seconds);
        answer["status"] = json!({
            "token": token,
            "expirationTimestamp": humantime::format_rfc3339_seconds(expires).to_string(),
        });
        Ok(answer)
    }

    /// Why `token` does not authenticate now, or who it is.
    fn authenticate(&self, token: &str) -> Result<&Minted, String> {
        let m = self
            .tokens
            .minted
            .get(token)
            .ok_or_else(|| "invalid bearer token".to_owned())?;
        if m.expires <= SystemTime::now() {
            return Err("invalid bearer token, service account token has expired".to_owned());
        }
        let alive = |kind: &str, name: &str, uid: &str| {
            self.kind_named(kind, None)
                .and_then(|k| self.objects[k].get(&(m.namespace.clone(), name.to_owned())))
                .is_some_and(|o| o["metadata"]["uid"] == uid)
        };
        if !alive("ServiceAccount", &m.service_account, &m.service_account_uid) {
            return Err(format!(
                "invalid bearer token, service account {}/{} has been deleted",
                m.namespace, m.service_account
            ));
        }
        if let Some((pod, uid)) = &m.pod {
            if !alive("Pod", pod, uid) {
                return Err(format!(
                    "invalid bearer token, pod {}/{pod} has been deleted",
                    m.namespace
                ));
            }
        }
        Ok(m)
    }

    /// Whether a request bearing `token` (a minted one) may use the API: valid, and for the
    /// API server's own audience.
    pub(crate) fn bearer_allowed(&self, token: &str) -> bool {
        self.authenticate(token)
            .is_ok_and(|m| m.audiences.iter().any(|a| a == API_AUDIENCE))
    }

    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`: the review with its status.
    pub(crate) fn token_review(&mut self, review: &Value) -> Result<Value, ApiError> {
        if review["kind"] != "TokenReview" || review["apiVersion"] != "authentication.k8s.io/v1" {
            return Err(ApiError::bad_request(
                "expected an authentication.k8s.io/v1 TokenReview",
            ));
        }
        self.tokens.reviews += 1;
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let wanted: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let wanted = if wanted.is_empty() {
            vec![API_AUDIENCE.to_owned()]
        } else {
            wanted
        };
        let status = match self.authenticate(token) {
            Err(e) => json!({"user": {}, "error": format!("[{e}]")}),
            Ok(m) => {
                let common: Vec<&String> =
                    wanted.iter().filter(|a| m.audiences.contains(a)).collect();
                if common.is_empty() {
                    json!({"user": {}, "error": format!(
                        "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
                        m.audiences, wanted)})
                } else {
                    let mut user = json!({
                        "username": format!("system:serviceaccount:{}:{}", m.namespace, m.service_account),
                        "uid": m.service_account_uid,
                        "groups": ["system:serviceaccounts",
                                   format!("system:serviceaccounts:{}", m.namespace),
                                   "system:authenticated"],
                    });
                    if let Some((pod, uid)) = &m.pod {
                        user["extra"] = json!({
                            "authentication.kubernetes.io/pod-name": [pod],
                            "authentication.kubernetes.io/pod-uid": [uid],
                        });
                    }
                    json!({"authenticated": true, "user": user, "audiences": common})
                }
            }
        };
        let mut answer = review.clone();
        answer["metadata"] = json!({"creationTimestamp": null});
        answer["status"] = status;
        Ok(answer)
    }
}
