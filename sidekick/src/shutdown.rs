//! Graceful shutdown on SIGTERM / SIGINT.
//!
//! The first signal cancels the returned token: loops stop taking new work and finish
//! what is in flight (the announcer revokes its lease, lb-sync finishes the API call it
//! is in). A second signal exits at once with status 130, for an operator who means it.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit status used when a second signal forces the exit.
pub const FORCED_EXIT_CODE: i32 = 130;

/// Starts listening for SIGTERM and SIGINT and returns the token the first one cancels.
///
/// Must be called inside a Tokio runtime.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: stopping gracefully (send again to force)"),
            _ = int.recv() => tracing::info!("SIGINT received: stopping gracefully (send again to force)"),
        }
        cancel.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(FORCED_EXIT_CODE);
    });
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn first_sigterm_cancels_the_token() {
        let token = super::on_signals().unwrap();
        assert!(!token.is_cancelled());
        // SAFETY-free: libc::raise only sends a signal to this process, whose handler is installed above.
        #[allow(unsafe_code)]
        // SAFETY: raise() has no memory-safety preconditions.
        unsafe {
            libc::raise(libc::SIGTERM);
        }
        tokio::time::timeout(Duration::from_secs(5), token.cancelled())
            .await
            .expect("token cancelled by SIGTERM");
    }
}
