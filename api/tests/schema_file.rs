//! `schema.graphql` at the workspace root is generated from the code. This test fails when it is
//! stale; `UPDATE_SCHEMA=1 cargo test -p chainfold-api --test schema_file` rewrites it.

#[test]
fn schema_graphql_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema.graphql");
    let generated = chainfold_api::schema::sdl();
    if std::env::var("UPDATE_SCHEMA").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write schema.graphql");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schema.graphql is stale: run `UPDATE_SCHEMA=1 cargo test -p chainfold-api --test schema_file` and commit it"
    );
}
