//! Writes `schemas/*.json` (the manifest kinds and `openapi.json`) from the otherix-api types:
//! `cargo run -p otherix-api --example write_schemas`.

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    std::fs::create_dir_all(&dir)?;
    for (name, text) in otherix_api::schema::all_schema_files() {
        std::fs::write(dir.join(&name), text)?;
        println!("wrote schemas/{name}");
    }
    std::fs::write(
        dir.join("openapi.json"),
        otherix_api::openapi::document_text(),
    )?;
    println!("wrote schemas/openapi.json");
    Ok(())
}
