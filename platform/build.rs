//! `sqlx::migrate!` embeds `../migrations` at compile time; without this, a migration added
//! after the last build would not be embedded by an incremental build (sqlx's advice).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
