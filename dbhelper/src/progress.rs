//! Load progress: a live line on a terminal, a log line every few seconds otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a terminal line is redrawn.
const DRAW_EVERY: Duration = Duration::from_millis(100);
/// How often a log line is written when standard error is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Tracks bytes and statements done.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    total_bytes: usize,
    total_statements: usize,
    last: Instant,
    drawn: bool,
}

/// `123.4 KiB`-style sizes.
#[must_use]
pub fn human_bytes(n: usize) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    if n >= 1 << 20 {
        format!("{:.1} MiB", f / f64::from(1 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", f / f64::from(1 << 10))
    } else {
        format!("{n} B")
    }
}

/// The progress text, e.g. `45% (180.2 KiB of 388.0 KiB, 2400 of 5302 statements)`.
#[must_use]
pub fn line(done_bytes: usize, total_bytes: usize, done_statements: usize, total_statements: usize) -> String {
    let pct = (done_bytes * 100).checked_div(total_bytes).unwrap_or(100);
    format!(
        "{pct}% ({} of {}, {done_statements} of {total_statements} statements)",
        human_bytes(done_bytes),
        human_bytes(total_bytes)
    )
}

impl Progress {
    /// Starts tracking; draws on standard error when it is a terminal.
    #[must_use]
    pub fn new(total_bytes: usize, total_statements: usize) -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            total_bytes,
            total_statements,
            last: Instant::now(),
            drawn: false,
        }
    }

    /// Reports what is done so far (cheap when nothing needs showing).
    pub fn update(&mut self, done_bytes: usize, done_statements: usize) {
        let every = if self.tty { DRAW_EVERY } else { LOG_EVERY };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let text = line(done_bytes, self.total_bytes, done_statements, self.total_statements);
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[Kloading: {text}");
            let _ = err.flush();
            self.drawn = true;
        } else {
            tracing::info!("loading: {text}");
        }
    }

    /// Clears the terminal line, if one was drawn.
    pub fn finish(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(397_259), "387.9 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(line(50, 200, 3, 10), "25% (50 B of 200 B, 3 of 10 statements)");
        assert_eq!(line(0, 0, 0, 0), "100% (0 B of 0 B, 0 of 0 statements)");
    }
}
