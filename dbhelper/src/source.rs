//! Reading the dump as a stream: the file in windows of about [`CHUNK`] bytes, each split
//! as it comes ([`dump::split_window`]) and hashed, so memory holds one window (at least
//! one whole statement) and never the dump.
//!
//! The dump is read twice: a first pass checks it (and learns its databases, its objects
//! and its sha256) before anything connects anywhere; the second one loads it. So it must
//! be a regular file: a pipe (standard input) is refused with one line, as it cannot be
//! read twice and holding it in memory is what streaming avoids. The second pass hashes
//! again: a file changed between the passes fails the load before the swap.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Error;
use crate::dump::{self, Carry, PieceKind};

/// Bytes read at a time; a window also holds the rest of the statement being cut.
pub const CHUNK: usize = 1 << 20;

/// What reading the whole dump found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Lowercase hex sha256 of the bytes read.
    pub sha256: String,
    /// How many bytes were read.
    pub bytes: usize,
}

/// One statement as the stream hands it over.
#[derive(Debug)]
pub struct Statement<'w> {
    /// Its bytes (without the delimiter).
    pub bytes: &'w [u8],
    /// 1-based number among the dump's statements.
    pub number: usize,
    /// The line it starts on.
    pub line: usize,
    /// The dump offset just past it.
    pub end: usize,
}

/// A dump opened for one pass.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    file: File,
    /// The file's size when opened (for progress).
    pub size: usize,
    /// Bytes read at a time.
    chunk: usize,
}

impl Source {
    /// Opens `path` for a pass.
    ///
    /// # Errors
    /// [`Error::DumpRead`] when it cannot be opened, [`Error::DumpUseless`] when it is not
    /// a regular file.
    pub fn open(path: &Path) -> Result<Source, Error> {
        let read_error = |source| Error::DumpRead {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_error)?;
        let meta = file.metadata().map_err(read_error)?;
        if meta.is_dir() {
            return Err(read_error(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "it is a directory",
            )));
        }
        if !meta.is_file() {
            return Err(Error::DumpUseless {
                path: path.to_owned(),
                reason: "it is not a regular file (a pipe or standard input?): dbhelper reads the dump twice, \
                         once to check it and once to load it; write it to a file first"
                    .into(),
            });
        }
        Ok(Source {
            path: path.to_owned(),
            file,
            size: usize::try_from(meta.len()).unwrap_or(usize::MAX),
            chunk: CHUNK,
        })
    }

    /// Reads the whole dump, calling `each` for every statement in order; stops at the
    /// first error `each` returns.
    ///
    /// # Errors
    /// [`Error::DumpRead`], [`Error::DumpSplit`], or what `each` returned.
    pub fn for_each_statement(
        mut self,
        mut each: impl FnMut(Statement<'_>) -> Result<(), Error>,
    ) -> Result<Summary, Error> {
        let mut hasher = Sha256::new();
        let chunk = self.chunk.max(1);
        let mut buf: Vec<u8> = Vec::with_capacity(chunk + chunk / 4);
        let mut carry = Carry::default();
        let mut want = chunk;
        let mut eof = false;
        let mut total = 0usize;
        loop {
            while !eof && buf.len() < want {
                let old = buf.len();
                buf.resize(want, 0);
                let n = read_some(&mut self.file, &mut buf[old..]).map_err(|source| Error::DumpRead {
                    path: self.path.clone(),
                    source,
                })?;
                buf.truncate(old + n);
                hasher.update(&buf[old..]);
                total += n;
                eof = n == 0;
            }
            let base = carry.offset;
            let (pieces, len) = dump::split_window(&buf, eof, &mut carry).map_err(|source| Error::DumpSplit {
                path: self.path.clone(),
                source,
            })?;
            for p in &pieces {
                if let PieceKind::Statement { number, .. } = p.kind {
                    each(Statement {
                        bytes: &buf[p.range.clone()],
                        number,
                        line: p.line,
                        end: base + p.range.end,
                    })?;
                }
            }
            if eof {
                break;
            }
            if len == 0 {
                // No statement ends in the window yet: a longer one.
                want = buf.len() * 2;
            } else {
                buf.drain(..len);
                want = buf.len() + chunk;
            }
        }
        Ok(Summary {
            sha256: hasher.finalize().iter().map(|b| format!("{b:02x}")).collect(),
            bytes: total,
        })
    }
}

/// One `read`, retried when interrupted by a signal.
fn read_some(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Streamed in small windows, the world dump gives the statements, lines, offsets and
    /// sha256 of the whole file split at once.
    #[test]
    fn streaming_gives_the_statements_of_the_whole_split() {
        let path = testbed::world_dump();
        let whole = std::fs::read(&path).unwrap();
        let pieces = dump::split(&whole).unwrap();
        let want: Vec<(Vec<u8>, usize, usize, usize)> = pieces
            .iter()
            .filter_map(|p| {
                p.statement_number()
                    .map(|n| (whole[p.range.clone()].to_vec(), n, p.line, p.range.end))
            })
            .collect();
        for chunk in [1, 100, 4096, 1 << 20] {
            let mut source = Source::open(&path).unwrap();
            source.chunk = chunk;
            let mut got = Vec::new();
            let summary = source
                .for_each_statement(|st| {
                    got.push((st.bytes.to_vec(), st.number, st.line, st.end));
                    Ok(())
                })
                .unwrap();
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(summary.bytes, whole.len());
            let sha: String = Sha256::digest(&whole).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(summary.sha256, sha);
        }
    }

    #[test]
    fn a_pipe_is_refused_naming_why() {
        let err = Source::open(Path::new("/dev/stdin")).map(|_| ()).unwrap_err();
        // Under the test runner standard input is /dev/null, a character device.
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
