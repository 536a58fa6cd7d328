//! Writes `schemas/*.json` from the otherix-api types:
//! `cargo run -p otherix-api --example write_schemas`.

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    std::fs::create_dir_all(&dir)?;
    for (name, text) in otherix_api::schema::all_schema_files() {
        std::fs::write(dir.join(&name), text)?;
        println!("wrote schemas/{name}");
    }
    Ok(())
}
