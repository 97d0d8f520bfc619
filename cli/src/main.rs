//! The one `chainfold` binary: a subcommand per role, wiring only. Production runs the same
//! build with a different subcommand so each role scales on its own.

mod commands;

use clap::Parser as _;

/// mimalloc instead of glibc's malloc: ingest and the projector allocate and free many small,
/// short-lived buffers per event (JSON texts, hex strings, rows), and glibc's malloc took ~20 %
/// of their CPU in the dense benchmark's profile (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = commands::Cli::parse();
    chainfold_platform::telemetry::init(cli.command.name(), &cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("chainfold: could not start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One clear line: the context chain, outermost first.
            eprintln!("chainfold: {}", format!("{err:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
