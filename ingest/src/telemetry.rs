//! Builds the one tracing subscriber the ingest logs through.

use tracing_subscriber::EnvFilter;

/// Logs to stderr; the level comes from `PHONEHOME_LOG` (same syntax as `RUST_LOG`), default
/// `info`. Calling it twice is harmless (tests start several servers in one process).
pub fn init() {
    let filter = EnvFilter::try_from_env("PHONEHOME_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn,rustls=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
