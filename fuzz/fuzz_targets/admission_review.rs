//! The injector's Kubernetes AdmissionReview handling (`inject::webhook::review`: the body of a
//! request to the webhook in, the status and AdmissionReview response out). Invariants: no
//! panic; the status is 200 or 400; a 200 answers the request's own uid; a patch is base64 JSON
//! Patch that applies to the reviewed object and gives exactly what `inject_object` makes of it
//! (what the API server will store is what the injector meant).
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weft_control_plane::inject::{inject_object, webhook, Settings};

fuzz_target!(|data: &[u8]| {
    let settings = Settings::default();
    let (status, body) = webhook::review(data, &settings);
    if status == http::StatusCode::BAD_REQUEST {
        assert!(
            body.get("error").and_then(Value::as_str).is_some(),
            "400 without a reason"
        );
        return;
    }
    assert_eq!(status, http::StatusCode::OK, "unexpected status");
    let review: Value = serde_json::from_slice(data).expect("a 200 answers a JSON body");
    let request = &review["request"];
    let response = &body["response"];
    assert_eq!(response["uid"], request["uid"], "answered another uid");
    let allowed = response["allowed"].as_bool().expect("allowed is a bool");
    let Some(patch) = response.get("patch") else {
        if !allowed {
            let reason = &response["status"]["message"];
            assert!(
                reason.as_str().is_some_and(|m| !m.is_empty()),
                "denied without a reason"
            );
        }
        return;
    };
    assert!(allowed, "a denial carries a patch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().expect("patch is a string"))
        .expect("patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("patch is JSON Patch");
    // The object as review() saw it: the review's namespace fills a missing one.
    let mut object = request["object"].clone();
    if let (Some(ns), Some(meta)) = (
        request.get("namespace").and_then(Value::as_str),
        object.get_mut("metadata").and_then(Value::as_object_mut),
    ) {
        meta.entry("namespace")
            .or_insert_with(|| Value::String(ns.to_owned()));
    }
    let injected = inject_object(&object, &settings).expect("a patched object was injected");
    json_patch::patch(&mut object, &patch).expect("the patch applies to the object");
    assert_eq!(
        object, injected,
        "the patch does not give the injected object"
    );
});
