use super::*;

#[test]
fn quantities() {
    for ok in ["100m", "64Mi", "1", "0.5", "1.5Gi", "2e3", "1E-2", "3k"] {
        assert!(quantity(ok).is_ok(), "{ok}");
    }
    for bad in ["", "-1", "abc", "1.2.3", "10mb", ".", "1e", "Mi"] {
        assert!(quantity(bad).is_err(), "{bad}");
    }
}

#[test]
fn settings_validate() {
    assert!(Settings::default().validate().is_ok());
    let s = Settings {
        control_plane: "nohost".into(),
        ..Settings::default()
    };
    assert!(s.validate().is_err());
    let s = Settings {
        trust_domain: "Bad Domain".into(),
        ..Settings::default()
    };
    assert!(s.validate().is_err());
}

#[test]
fn other_kinds_pass_through() {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
    assert_eq!(
        inject_object(&svc, &Settings::default()).expect("inject"),
        svc
    );
}
