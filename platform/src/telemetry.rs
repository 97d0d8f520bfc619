//! Tracing set up once per process: an `EnvFilter` from `--log`/`RUST_LOG`, text or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::LogArgs;

/// Installs the global subscriber. Logs go to stderr so stdout stays for a command's output
/// (`chainfold tail` prints records there).
pub fn init(role: &str, args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.filter).unwrap_or_else(|err| {
        eprintln!(
            "chainfold: invalid log filter {:?} ({err}); using info",
            args.filter
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = if args.json {
        builder.json().try_init()
    } else {
        builder.compact().try_init()
    };
    if installed.is_ok() {
        tracing::debug!(role, "telemetry initialised");
    }
}
