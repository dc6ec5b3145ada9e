//! The operators' YAML, as the sidecar and the control plane read it: a sidecar config file
//! (`weft_policy::parse`, parse + validate) and a mesh policy file (`wire::MeshFile` +
//! `validate_mesh`). Invariants: no panic; a syntax error's line lies within the text; every
//! field an error names can be looked up (`locate`) without panicking, and a location it finds
//! lies within the text; a mesh file that parses serializes to YAML that parses back to the same
//! serialization (compared as text, so a NaN cannot fail it).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use weft_policy::{wire, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = yaml_lines(text);
    match weft_policy::parse(text, Path::new("fuzz.yaml"), Path::new("/nonexistent")) {
        Ok(_) => {}
        Err(ConfigError::Syntax { location, .. }) => {
            if let Some((line, _)) = location.split_once(':') {
                let line: usize = line.trim().parse().expect("a line number");
                // An error at the end of the stream (a file of only a comment, no newline:
                // found by this target) is placed on the line after the last.
                assert!(line <= lines + 1, "syntax error at line {line} of {lines}");
            }
        }
        Err(ConfigError::Invalid { errors, .. }) => check_fields(text, &errors),
        Err(_) => {}
    }
    if let Ok(mesh) = serde_yaml::from_str::<wire::MeshFile>(text) {
        if let Err(errors) = weft_policy::validate_mesh(mesh.clone()) {
            check_fields(text, &errors);
        }
        let once = serde_yaml::to_string(&mesh).expect("a parsed mesh file serializes");
        let back: wire::MeshFile = serde_yaml::from_str(&once)
            .unwrap_or_else(|e| panic!("serialized mesh file does not parse: {e}\n{once}"));
        let twice = serde_yaml::to_string(&back).expect("serializes again");
        assert_eq!(once, twice, "YAML round trip changed the mesh file");
    }
});

/// Lines as YAML counts them: a lone CR breaks a line too (YAML 1.2, 5.4), so an error's line can
/// exceed what `str::lines` counts (found by this target: CRs in a path gave line 87 of 14).
fn yaml_lines(text: &str) -> usize {
    let bytes = text.as_bytes();
    let lone_cr = bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
        .count();
    bytes.iter().filter(|&&b| b == b'\n').count() + lone_cr + 1
}

fn check_fields(text: &str, errors: &[weft_policy::FieldError]) {
    let lines = yaml_lines(text);
    for e in errors {
        if let Some(at) = weft_policy::locate(text, &e.field) {
            assert!(
                at.line <= lines,
                "{} located at line {} of {lines}",
                e.field,
                at.line
            );
        }
    }
}
