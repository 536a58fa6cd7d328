//! The committed OpenAPI document (`schemas/openapi.json`, kept current by the drift test in
//! `otherix_api::openapi`) passes openapi-spec-validator, the reference Python validator of
//! OpenAPI 3.x documents (`scripts/install-deps.sh --test` installs it). A document it
//! refuses is refused here too, so the check can fail.

use std::path::Path;
use std::process::Command;

fn validate(path: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(path)
        .output()
        .expect("python3 runs (scripts/install-deps.sh --test installs the validator)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("No module named"),
        "openapi-spec-validator is missing: run scripts/install-deps.sh --test\n{text}"
    );
    (out.status.success(), text)
}

#[test]
fn committed_openapi_json_passes_openapi_spec_validator() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/openapi.json");
    let (ok, text) = validate(&path);
    assert!(ok && text.contains(": OK"), "{text}");

    // The same document with a broken operation is refused.
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    doc["paths"]["/v1/vms"]["get"]["responses"] = serde_json::json!({"200": "not an object"});
    let dir = std::env::temp_dir().join(format!("otherix-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.json");
    std::fs::write(&broken, doc.to_string()).unwrap();
    let (ok, text) = validate(&broken);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "a broken document passed: {text}");
}
