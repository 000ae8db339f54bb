//! The dump splitter: bytes in, pieces out.
//!
//! [`split`] cuts a SQL dump into [`Piece`]s the way the `mysql` command-line client reads
//! a script: statements end at the current delimiter (`;` unless a `DELIMITER` command,
//! in any letter case, changed it), except inside quotes and comments as [`crate::lex`]
//! reads them (the client's rules: a delimiter inside a `/*!…*/` version comment does end
//! the statement, one inside a `/*+…*/` hint does not). Version comments and hints are code:
//! they stay in the statement, byte for byte, and the server executes them. A line
//! `USE db` without a delimiter is a statement of its own, as the client treats it (unless
//! its quoted name goes on past the line, then it ends at the delimiter). The sandbox-mode
//! line of newer mariadb-dump (`/*!999999\- … */`, `/*M!999999\- … */`) is read as a comment:
//! no server runs a version-999999 comment.
//!
//! Guarantees (each checked by the tests below):
//! - it does no I/O and never decodes text: a latin1 dump stays latin1, bytes are only
//!   compared with ASCII;
//! - it never panics, whatever the input;
//! - the pieces cover the input exactly, in order: joining every piece's bytes gives the
//!   input back, so each statement is a byte-exact slice of the dump;
//! - an input that ends inside a quote or a comment is an error naming where that quote or
//!   comment started.

use std::ops::Range;

use crate::lex::{self, Block, end_of_line, is_space};

/// What a piece of the dump is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// A statement to send to the server (without its delimiter and trailing whitespace).
    Statement {
        /// 1-based position among the dump's statements, for error messages.
        number: usize,
        /// How the statement ended.
        end: StatementEnd,
    },
    /// The delimiter that ended the statement before it.
    Delimiter,
    /// A `DELIMITER x` client command line; `new` is the delimiter from then on.
    DelimiterCommand {
        /// The new delimiter's bytes.
        new: Vec<u8>,
    },
    /// Whitespace and comments between statements.
    Gap,
}

/// How a statement ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatementEnd {
    /// At the current delimiter.
    Delimiter,
    /// At the end of a client-command line (`USE db` without a delimiter).
    Line,
    /// At the end of the input, without a delimiter (the client runs it anyway).
    EndOfInput,
}

/// One contiguous piece of the dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// What it is.
    pub kind: PieceKind,
    /// Where its bytes are in the input.
    pub range: Range<usize>,
    /// The 1-based line of its first byte.
    pub line: usize,
}

impl Piece {
    /// The statement number when this piece is a statement.
    #[must_use]
    pub fn statement_number(&self) -> Option<usize> {
        match self.kind {
            PieceKind::Statement { number, .. } => Some(number),
            _ => None,
        }
    }
}

/// What kind of construct an input ended inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// A `'…'` string.
    SingleQuote,
    /// A `"…"` string.
    DoubleQuote,
    /// A `` `…` `` identifier.
    Backtick,
    /// A `/* … */` comment.
    Comment,
    /// A `/*! … */` version comment (or `/*M! … */`, `/*+ … */`).
    VersionComment,
}

impl std::fmt::Display for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Open::SingleQuote => "a '-quoted string",
            Open::DoubleQuote => "a \"-quoted string",
            Open::Backtick => "a `-quoted identifier",
            Open::Comment => "a /* comment",
            Open::VersionComment => "a /*! version comment",
        })
    }
}

/// Why a dump cannot be split.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The input ends before a quote or comment is closed.
    #[error("the dump ends inside {open} that starts at line {line} (byte {offset})")]
    Unterminated {
        /// What was left open.
        open: Open,
        /// The 1-based line where it starts.
        line: usize,
        /// The byte offset where it starts.
        offset: usize,
    },
    /// A `DELIMITER` command without a usable delimiter.
    #[error("DELIMITER at line {line} {reason}")]
    BadDelimiter {
        /// The 1-based line of the command.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Splits a dump into pieces that cover it exactly.
///
/// # Errors
/// [`SplitError`] when the input ends inside a quote or comment, or a `DELIMITER` command
/// has no usable argument.
pub fn split(input: &[u8]) -> Result<Vec<Piece>, SplitError> {
    let mut s = Splitter::new(input, &Carry::default());
    s.run()?;
    Ok(s.pieces)
}

/// Bytes past a delimiter that a window must hold before [`split_window`] cuts after it:
/// the most any decision before the delimiter looks ahead (`/*M!999999\-` is 12).
pub const LOOKAHEAD: usize = 16;

/// What splitting carries from one window of a streamed dump to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carry {
    /// The delimiter in force.
    pub delimiter: Vec<u8>,
    /// Statements cut so far.
    pub statements: usize,
    /// The 1-based line of the window's first byte.
    pub line: usize,
    /// Where the window starts in the dump.
    pub offset: usize,
    /// Whether the window's first byte starts a line.
    pub line_start: bool,
}

impl Default for Carry {
    fn default() -> Self {
        Carry {
            delimiter: b";".to_vec(),
            statements: 0,
            line: 1,
            offset: 0,
            line_start: true,
        }
    }
}

/// Splits the part of `window` (the dump from `carry.offset` on) that later bytes cannot
/// change: with `eof`, all of it (as [`split`]); otherwise up to the end of the last
/// delimiter that is followed by at least [`LOOKAHEAD`] bytes, where the splitter is between
/// statements again. Returns the pieces (ranges relative to `window`, lines absolute) and
/// how many bytes they cover (0: read more and call again with the longer window), and
/// moves `carry` past them.
///
/// The pieces equal those [`split`] cuts from the whole dump: a cut is only made where
/// `split` itself starts afresh (its state is the delimiter, the statement count, the line
/// and whether a line starts), and nothing before a delimiter depends on bytes further
/// than [`LOOKAHEAD`] past it.
///
/// # Errors
/// As [`split`], only with `eof` (before it, an open quote may close in the next bytes).
pub fn split_window(window: &[u8], eof: bool, carry: &mut Carry) -> Result<(Vec<Piece>, usize), SplitError> {
    let mut s = Splitter::new(window, carry);
    let ran = s.run();
    if eof {
        ran?;
        let len = window.len();
        advance(carry, window, &s.pieces, len);
        return Ok((s.pieces, len));
    }
    let Some(cut) = s
        .pieces
        .iter()
        .rposition(|p| p.kind == PieceKind::Delimiter && p.range.end + LOOKAHEAD <= window.len())
    else {
        return Ok((Vec::new(), 0));
    };
    let mut pieces = s.pieces;
    pieces.truncate(cut + 1);
    let len = pieces[cut].range.end;
    advance(carry, window, &pieces, len);
    Ok((pieces, len))
}

/// Moves `carry` past the first `len` bytes of `window`, which `pieces` cover.
fn advance(carry: &mut Carry, window: &[u8], pieces: &[Piece], len: usize) {
    for p in pieces {
        match &p.kind {
            PieceKind::DelimiterCommand { new } => carry.delimiter.clone_from(new),
            PieceKind::Statement { number, .. } => carry.statements = *number,
            _ => {}
        }
    }
    carry.line += newlines(&window[..len]);
    carry.offset += len;
    if len > 0 {
        carry.line_start = window[len - 1] == b'\n';
    }
}

/// The statements of `pieces` with their bytes.
pub fn statements<'a>(input: &'a [u8], pieces: &'a [Piece]) -> impl Iterator<Item = (&'a Piece, &'a [u8])> + 'a {
    pieces
        .iter()
        .filter(|p| matches!(p.kind, PieceKind::Statement { .. }))
        .map(move |p| (p, &input[p.range.clone()]))
}

/// 1-based line of `offset` in `input`, whose first byte is on line `first` (used on error
/// paths only; pieces count lines incrementally).
fn line_of(input: &[u8], offset: usize, first: usize) -> usize {
    first + newlines(&input[..offset.min(input.len())])
}

/// How many line feeds `s` holds (memchr: every byte of the dump is counted twice, and
/// the release build's size optimisation leaves a plain loop unvectorised).
fn newlines(s: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', s).count()
}

/// `haystack` contains `needle` (byte comparison).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

struct Splitter<'a> {
    input: &'a [u8],
    pieces: Vec<Piece>,
    delimiter: Vec<u8>,
    statements: usize,
    /// Line counting: `line` is the line of byte `line_pos`.
    line_pos: usize,
    line: usize,
    /// The line of the input's first byte, its offset in the dump, and whether it starts
    /// a line (the input is a window of a streamed dump).
    first_line: usize,
    offset: usize,
    line_start: bool,
}

impl<'a> Splitter<'a> {
    fn new(input: &'a [u8], carry: &Carry) -> Self {
        Splitter {
            input,
            pieces: Vec::new(),
            delimiter: carry.delimiter.clone(),
            statements: carry.statements,
            line_pos: 0,
            line: carry.line,
            first_line: carry.line,
            offset: carry.offset,
            line_start: carry.line_start,
        }
    }

    /// Line of `pos`; positions are asked in increasing order.
    fn line_at(&mut self, pos: usize) -> usize {
        if pos < self.line_pos {
            return line_of(self.input, pos, self.first_line);
        }
        self.line += newlines(&self.input[self.line_pos..pos]);
        self.line_pos = pos;
        self.line
    }

    fn push(&mut self, kind: PieceKind, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        // Adjacent gaps become one.
        let last = self.pieces.last_mut();
        if let Some(last) = last.filter(|l| kind == PieceKind::Gap && l.kind == kind && l.range.end == range.start) {
            last.range.end = range.end;
            return;
        }
        let line = self.line_at(range.start);
        self.pieces.push(Piece { kind, range, line });
    }

    fn push_statement(&mut self, range: Range<usize>, end: StatementEnd) {
        // Trailing whitespace belongs to the gap that follows.
        let mut stop = range.end;
        while stop > range.start && is_space(self.input[stop - 1]) {
            stop -= 1;
        }
        if stop == range.start {
            self.push(PieceKind::Gap, range);
            return;
        }
        self.statements += 1;
        let number = self.statements;
        self.push(PieceKind::Statement { number, end }, range.start..stop);
        self.push(PieceKind::Gap, stop..range.end);
    }

    fn unterminated(&self, open: Open, offset: usize) -> SplitError {
        SplitError::Unterminated {
            open,
            line: line_of(self.input, offset, self.first_line),
            offset: self.offset + offset,
        }
    }

    /// Skips the block comment that starts at `i`; returns the index after it.
    fn skip_block_comment(&self, i: usize) -> Result<usize, SplitError> {
        lex::block_end(self.input, i).ok_or_else(|| self.unterminated(Open::Comment, i))
    }

    /// Skips a quoted string or identifier that starts at `i`; returns the index after it.
    fn skip_quoted(&self, i: usize) -> Result<usize, SplitError> {
        lex::quoted_end(self.input, i).ok_or_else(|| {
            let open = match self.input[i] {
                b'\'' => Open::SingleQuote,
                b'"' => Open::DoubleQuote,
                _ => Open::Backtick,
            };
            self.unterminated(open, i)
        })
    }

    /// At a line start in a gap: is this a `USE db` line without the delimiter?
    /// Returns where the word starts and where the line ends.
    fn use_line(&self, line_start: usize) -> Option<(usize, usize)> {
        let eol = end_of_line(self.input, line_start);
        let line = &self.input[line_start..eol];
        let word = line.iter().position(|&b| b != b' ' && b != b'\t')?;
        let rest = &line[word..];
        let is_use =
            rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"use") && rest.get(3).is_none_or(|&b| is_space(b));
        if !is_use || contains(line, &self.delimiter) {
            return None;
        }
        // A quoted name that goes on past the line end (`USE `a<newline>b`;`) makes it
        // an ordinary statement that ends at the delimiter, as the client reads it.
        let mut j = line_start + word;
        while j < eol {
            match self.input[j] {
                b'\'' | b'"' | b'`' => match lex::quoted_end(self.input, j) {
                    Some(end) if end <= eol => j = end,
                    _ => return None,
                },
                _ => j += 1,
            }
        }
        Some((line_start + word, eol))
    }

    /// In a gap: is there a `DELIMITER x` command at `i`? It takes the rest of the line.
    /// Returns the end of the command (trailing whitespace excluded), the end of the line
    /// and the new delimiter.
    fn delimiter_command(&self, i: usize) -> Result<Option<(usize, usize, Vec<u8>)>, SplitError> {
        const WORD: &[u8] = b"delimiter";
        let rest = &self.input[i..];
        let is_cmd = rest.len() >= WORD.len()
            && rest[..WORD.len()].eq_ignore_ascii_case(WORD)
            && rest.get(WORD.len()).is_none_or(|&b| is_space(b));
        if !is_cmd {
            return Ok(None);
        }
        let bad = |reason| SplitError::BadDelimiter {
            line: line_of(self.input, i, self.first_line),
            reason,
        };
        let eol = end_of_line(self.input, i);
        let mut arg = &self.input[i + WORD.len()..eol];
        while let [first, tail @ ..] = arg {
            if !is_space(*first) {
                break;
            }
            arg = tail;
        }
        let new: Vec<u8> = match arg.first() {
            None => return Err(bad("has no delimiter after it")),
            Some(&q @ (b'\'' | b'"' | b'`')) => {
                let inner = &arg[1..];
                let end = inner.iter().position(|&b| b == q).unwrap_or(inner.len());
                inner[..end].to_vec()
            }
            Some(_) => arg.iter().copied().take_while(|&b| !is_space(b)).collect(),
        };
        if new.is_empty() {
            return Err(bad("has an empty delimiter"));
        }
        if new.contains(&b'\\') {
            return Err(bad("has a delimiter with a backslash"));
        }
        let mut stop = eol;
        while stop > i && is_space(self.input[stop - 1]) {
            stop -= 1;
        }
        Ok(Some((stop, eol, new)))
    }

    /// Cuts the input into `self.pieces`; on an error, the pieces cut before it stay.
    fn run(&mut self) -> Result<(), SplitError> {
        let input = self.input;
        let n = input.len();
        let mut i = 0;
        let mut gap_start = 0;
        // Start of the pending statement, if one has begun.
        let mut stmt_start: Option<usize> = None;
        // An open version comment or hint inside the pending statement, and where it starts.
        let mut code: Option<(Block, usize)> = None;
        // The bytes that may start something inside a statement: a quote, a comment, the
        // end of a version comment, the delimiter. The rest (digits, commas, parentheses,
        // letters: most of a dump outside its strings) is skipped in a tight loop.
        let mut special = [false; 256];
        for b in [b'\'', b'"', b'`', b'*', b'/', b'#', b'-'] {
            special[usize::from(b)] = true;
        }
        if let Some(&first) = self.delimiter.first() {
            special[usize::from(first)] = true;
        }

        while i < n {
            let Some(start) = stmt_start else {
                // Between statements: whitespace, comments and client commands.
                let at_line_start = if i == 0 { self.line_start } else { input[i - 1] == b'\n' };
                if let Some((word, eol)) = at_line_start.then(|| self.use_line(i)).flatten() {
                    self.push(PieceKind::Gap, gap_start..word);
                    self.push_statement(word..eol, StatementEnd::Line);
                    i = eol;
                    gap_start = eol;
                    continue;
                }
                if is_space(input[i]) {
                    i += 1;
                    continue;
                }
                if lex::line_comment_at(input, i) {
                    i = end_of_line(input, i);
                    continue;
                }
                if let Some((Block::Comment | Block::Sandbox, _)) = lex::block_at(input, i) {
                    i = self.skip_block_comment(i)?;
                    continue;
                }
                if let Some((stop, eol, new)) = self.delimiter_command(i)? {
                    self.push(PieceKind::Gap, gap_start..i);
                    self.push(PieceKind::DelimiterCommand { new: new.clone() }, i..stop);
                    self.delimiter = new;
                    if let Some(&first) = self.delimiter.first() {
                        special[usize::from(first)] = true;
                    }
                    i = eol;
                    gap_start = stop;
                    continue;
                }
                self.push(PieceKind::Gap, gap_start..i);
                stmt_start = Some(i);
                continue;
            };

            while i < n && !special[usize::from(input[i])] {
                i += 1;
            }
            if i == n {
                break;
            }
            // The client ends a statement at its delimiter even inside a version comment,
            // but not inside an optimizer hint.
            let in_hint = matches!(code, Some((Block::Hint, _)));
            // The first byte alone first: this runs for every byte of every statement.
            if !in_hint && self.delimiter.first() == Some(&input[i]) && input[i..].starts_with(&self.delimiter) {
                self.push_statement(start..i, StatementEnd::Delimiter);
                let end = i + self.delimiter.len();
                self.push(PieceKind::Delimiter, i..end);
                i = end;
                gap_start = i;
                stmt_start = None;
                code = None;
                continue;
            }
            match input[i] {
                b'\'' | b'"' | b'`' => i = self.skip_quoted(i)?,
                b'*' if code.is_some() && input.get(i + 1) == Some(&b'/') => {
                    code = None;
                    i += 2;
                }
                b'/' => match lex::block_at(input, i) {
                    Some((Block::Comment, _)) => i = self.skip_block_comment(i)?,
                    Some((_, len)) if code.is_none() => {
                        code = lex::block_at(input, i).map(|(kind, _)| (kind, i));
                        i += len;
                    }
                    _ => i += 1,
                },
                _ if lex::line_comment_at(input, i) => i = end_of_line(input, i),
                _ => i += 1,
            }
        }

        match stmt_start {
            Some(start) => {
                if let Some((_, open)) = code {
                    return Err(self.unterminated(Open::VersionComment, open));
                }
                self.push_statement(start..n, StatementEnd::EndOfInput);
            }
            None => self.push(PieceKind::Gap, gap_start..n),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The statements of `input` as strings (lossy, for readable test tables).
    fn stmts(input: &[u8]) -> Vec<String> {
        let pieces = split(input).unwrap();
        statements(input, &pieces)
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    fn assert_covers(input: &[u8], pieces: &[Piece]) {
        let mut joined = Vec::new();
        let mut at = 0;
        for p in pieces {
            assert_eq!(p.range.start, at, "pieces are contiguous: {pieces:?}");
            assert!(!p.range.is_empty(), "no empty piece: {pieces:?}");
            joined.extend_from_slice(&input[p.range.clone()]);
            at = p.range.end;
        }
        assert_eq!(joined, input, "joining the pieces gives the input back");
    }

    #[test]
    fn tricky_inputs_table() {
        let cases: &[(&str, &[&str])] = &[
            ("SELECT 1; SELECT 2;", &["SELECT 1", "SELECT 2"]),
            ("SELECT 1", &["SELECT 1"]),
            ("  \n\n", &[]),
            (";;;", &[]),
            ("INSERT INTO t VALUES ('a;b');", &["INSERT INTO t VALUES ('a;b')"]),
            (
                r"INSERT INTO t VALUES ('it\'s;');x;",
                &[r"INSERT INTO t VALUES ('it\'s;')", "x"],
            ),
            (
                "INSERT INTO t VALUES ('it''s;');x;",
                &["INSERT INTO t VALUES ('it''s;')", "x"],
            ),
            (r#"SELECT "a\";b";x"#, &[r#"SELECT "a\";b""#, "x"]),
            (r#"SELECT "a"";b";x"#, &[r#"SELECT "a"";b""#, "x"]),
            (r"SELECT '\\';x;", &[r"SELECT '\\'", "x"]),
            ("SELECT `a;b``c;d`;x", &["SELECT `a;b``c;d`", "x"]),
            (r"SELECT `a\`;x;", &[r"SELECT `a\`", "x"]),
            ("-- a comment; here\nSELECT 1;", &["SELECT 1"]),
            ("SELECT 1 -- tail; comment\n;", &["SELECT 1 -- tail; comment"]),
            ("SELECT 1--1;", &["SELECT 1--1"]),
            ("SELECT 1 --\tx;\n;", &["SELECT 1 --\tx;"]),
            ("# hash; comment\nSELECT 1;", &["SELECT 1"]),
            ("SELECT 1 # tail;\n, 2;", &["SELECT 1 # tail;\n, 2"]),
            ("/* block; comment */ SELECT 1;", &["SELECT 1"]),
            ("SELECT /* in; side */ 1;", &["SELECT /* in; side */ 1"]),
            ("/*!40101 SET NAMES latin1 */;", &["/*!40101 SET NAMES latin1 */"]),
            ("/*!40101 SET @a='x;y' */;z;", &["/*!40101 SET @a='x;y' */", "z"]),
            // The client ends a statement at a delimiter inside a version comment (and the
            // server then rejects the halves): dumps wrap such bodies in DELIMITER ;;.
            (
                "/*!50003 CREATE*/ /*!50003 TRIGGER t BEGIN x; END */;",
                &["/*!50003 CREATE*/ /*!50003 TRIGGER t BEGIN x", "END */"],
            ),
            (
                "SELECT 4 /*!40101 ,5; SELECT 6 */;",
                &["SELECT 4 /*!40101 ,5", "SELECT 6 */"],
            ),
            ("SELECT 7 /*M!100101 ,8 */;", &["SELECT 7 /*M!100101 ,8 */"]),
            ("select 15 /*+ a; */;", &["select 15 /*+ a; */"]),
            (
                "DELIMITER ;;\n/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER t AFTER INSERT ON p FOR EACH ROW BEGIN INSERT INTO a VALUES ('x; y'); END */;;\nDELIMITER ;\n",
                &[
                    "/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER t AFTER INSERT ON p FOR EACH ROW BEGIN INSERT INTO a VALUES ('x; y'); END */",
                ],
            ),
            // The sandbox-mode first line of newer mariadb-dump, both spellings.
            (
                "/*M!999999\\- enable the sandbox mode */ \n-- MariaDB dump\nSELECT 1;",
                &["SELECT 1"],
            ),
            (
                "/*!999999\\- enable the sandbox mode */\nDELIMITER $$\nSELECT 2$$",
                &["SELECT 2"],
            ),
            // `--` then 0x7f is not a comment for the client: the `;` ends the statement.
            ("SELECT 3 --\x7f;\nSELECT 4;", &["SELECT 3 --\x7f", "SELECT 4"]),
            ("SELECT 3 --\x7f;x\n;", &["SELECT 3 --\x7f", "x"]),
            // DELIMITER in any letter case, with any delimiter.
            (
                "DeLiMiTeR $$\nSELECT 10$$\ndelimiter ;\nSELECT 11;",
                &["SELECT 10", "SELECT 11"],
            ),
            (
                "DELIMITER //\nSELECT 1//\nDELIMITER END_OF_IT\nSELECT 2 END_OF_IT",
                &["SELECT 1", "SELECT 2"],
            ),
            ("DELIMITER ;;\nSELECT ';;' ;;\nDELIMITER ;", &["SELECT ';;'"]),
            ("  delimiter ||\nSELECT 1 || SELECT 2||", &["SELECT 1", "SELECT 2"]),
            // Identifiers with backticks, spaces, quotes, newlines; a USE spanning lines.
            (
                "USE `we\nird db`;\nCREATE TABLE `t``q; x` (`a\nb` int, `it's` int);",
                &["USE `we\nird db`", "CREATE TABLE `t``q; x` (`a\nb` int, `it's` int)"],
            ),
            ("USE `sp ace`\nSELECT 1;", &["USE `sp ace`", "SELECT 1"]),
            // Binary data as mariadb-dump writes it (escaped) and as --hex-blob writes it.
            (
                "INSERT INTO t VALUES\n(1,'\\0\u{7f}\\'\\\"\\\\\\n\\r\\Z;'),\n(2,0xDEADBEEF);",
                &["INSERT INTO t VALUES\n(1,'\\0\u{7f}\\'\\\"\\\\\\n\\r\\Z;'),\n(2,0xDEADBEEF)"],
            ),
            ("SELECT `x\\`;SELECT 2;", &["SELECT `x\\`", "SELECT 2"]),
            (
                "LOCK TABLES `t` WRITE;\nUNLOCK TABLES;",
                &["LOCK TABLES `t` WRITE", "UNLOCK TABLES"],
            ),
            ("/*M!100101 SET a=1 */;", &["/*M!100101 SET a=1 */"]),
            (
                "SELECT /*+ MAX_EXECUTION_TIME(1) */ 1;",
                &["SELECT /*+ MAX_EXECUTION_TIME(1) */ 1"],
            ),
            (
                "USE `world`\n--\nDROP TABLE IF EXISTS `City`;",
                &["USE `world`", "DROP TABLE IF EXISTS `City`"],
            ),
            ("use world\r\nSELECT 1;", &["use world", "SELECT 1"]),
            ("USE world;\nSELECT 1;", &["USE world", "SELECT 1"]),
            ("SELECT 1;\n  USE w\nSELECT 2;", &["SELECT 1", "USE w", "SELECT 2"]),
            ("user_table;", &["user_table"]),
            ("SELECT\nuse_me;", &["SELECT\nuse_me"]),
            (
                "DELIMITER ;;\nCREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2; END ;;\nDELIMITER ;\nSELECT 3;",
                &["CREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2; END", "SELECT 3"],
            ),
            (
                "delimiter //\nSELECT ';//'//\nSELECT 2//",
                &["SELECT ';//'", "SELECT 2"],
            ),
            ("DELIMITER $$ trailing words\nSELECT 1$$", &["SELECT 1"]),
            ("DELIMITER '//'\nSELECT 1//", &["SELECT 1"]),
            ("SELECT 1; DELIMITER //\nSELECT 2//", &["SELECT 1", "SELECT 2"]),
            ("DELETE FROM t;", &["DELETE FROM t"]),
            ("DELIMITERS;", &["DELIMITERS"]),
            ("SELECT 1 /* c */ ;", &["SELECT 1 /* c */"]),
            ("-- only a comment", &[]),
            ("--", &[]),
            ("SELECT 1\n--", &["SELECT 1\n--"]),
        ];
        for (input, want) in cases {
            let got = stmts(input.as_bytes());
            assert_eq!(&got, want, "input {input:?}");
            assert_covers(input.as_bytes(), &split(input.as_bytes()).unwrap());
        }
    }

    /// Raw bytes that are not UTF-8 (latin1 text, binary data written escaped) pass
    /// through, and a quote byte inside a multi-byte sequence is still a quote, as for the
    /// client reading a latin1 or binary dump.
    #[test]
    fn non_utf8_literals_and_raw_binary() {
        let input = b"INSERT INTO b VALUES (1,'\xff\xfe\\'\x00;\x80'),(2,'\xe9;');\nSELECT 2;";
        let pieces = split(input).unwrap();
        let got: Vec<&[u8]> = statements(input, &pieces).map(|(_, b)| b).collect();
        assert_eq!(
            got,
            [
                &b"INSERT INTO b VALUES (1,'\xff\xfe\\'\x00;\x80'),(2,'\xe9;')"[..],
                b"SELECT 2"
            ]
        );
        // A megabyte-long extended insert is one statement, byte for byte.
        let mut long = b"INSERT INTO t VALUES ".to_vec();
        for n in 0..60_000 {
            long.extend_from_slice(format!("({n},'r;{n}'),").as_bytes());
        }
        long.pop();
        let mut input = long.clone();
        input.extend_from_slice(b";\nSELECT 1;");
        let pieces = split(&input).unwrap();
        let got: Vec<&[u8]> = statements(&input, &pieces).map(|(_, b)| b).collect();
        assert!(long.len() > 1 << 20);
        assert_eq!(got, [&long[..], b"SELECT 1"]);
    }

    #[test]
    fn latin1_bytes_pass_through_unchanged() {
        let input = b"INSERT INTO `City` VALUES (45,'B\xe9ja\xefa','DZA','B\xe9ja\xefa',117162);\n";
        let pieces = split(input).unwrap();
        let (_, bytes) = statements(input, &pieces).next().unwrap();
        assert_eq!(bytes, &input[..input.len() - 2]);
    }

    #[test]
    fn statement_numbers_and_lines() {
        let input = b"-- header\n\nSELECT 1;\nSELECT\n 2;\n\nUSE w\nSELECT 3";
        let pieces = split(input).unwrap();
        let got: Vec<(usize, usize, StatementEnd)> = pieces
            .iter()
            .filter_map(|p| match p.kind {
                PieceKind::Statement { number, end } => Some((number, p.line, end)),
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 3, StatementEnd::Delimiter),
                (2, 4, StatementEnd::Delimiter),
                (3, 7, StatementEnd::Line),
                (4, 8, StatementEnd::EndOfInput),
            ]
        );
    }

    #[test]
    fn unterminated_inputs_name_where_they_start() {
        let cases: &[(&str, Open, usize, usize)] = &[
            ("SELECT 1;\nSELECT 'abc;\n", Open::SingleQuote, 2, 17),
            ("SELECT \"abc", Open::DoubleQuote, 1, 7),
            ("SELECT `abc", Open::Backtick, 1, 7),
            (r"SELECT 'abc\'", Open::SingleQuote, 1, 7),
            (r"SELECT 'abc\", Open::SingleQuote, 1, 7),
            ("SELECT 1;\n\n/* open", Open::Comment, 3, 11),
            ("SELECT 1 /* open", Open::Comment, 1, 9),
            ("/*!40101 SET a=1 ", Open::VersionComment, 1, 0),
            ("SELECT 1 /*+ hint ;", Open::VersionComment, 1, 9),
            ("/*", Open::Comment, 1, 0),
        ];
        for (input, open, line, offset) in cases {
            let err = split(input.as_bytes()).unwrap_err();
            assert_eq!(
                err,
                SplitError::Unterminated {
                    open: *open,
                    line: *line,
                    offset: *offset
                },
                "input {input:?}"
            );
            assert!(err.to_string().contains(&format!("line {line}")), "{err}");
        }
    }

    #[test]
    fn bad_delimiter_commands() {
        for input in [
            "DELIMITER\nSELECT 1;",
            "DELIMITER   \n",
            "DELIMITER \\\\\n",
            "DELIMITER ''\n",
        ] {
            let err = split(input.as_bytes()).unwrap_err();
            assert!(
                matches!(err, SplitError::BadDelimiter { line: 1, .. }),
                "{input:?}: {err:?}"
            );
        }
    }

    #[test]
    fn the_world_dump_shape() {
        // The real dump's opening, verbatim in structure: a USE line without a delimiter
        // followed by comment lines, version comments, and single-row inserts.
        let input = b"/*!40101 SET NAMES latin1 */;\n\nCREATE DATABASE IF NOT EXISTS `world` ;\n\nUSE `world`\n--\n-- Table structure\n--\n\nDROP TABLE IF EXISTS `City`;\nCREATE TABLE `City` (\n  `Name` char(35) NOT NULL DEFAULT ''\n) ENGINE=InnoDB DEFAULT CHARSET=latin1;\nINSERT INTO `City` VALUES (1,'Kabul');\n-- Dump completed\n";
        assert_eq!(
            stmts(input),
            vec![
                "/*!40101 SET NAMES latin1 */",
                "CREATE DATABASE IF NOT EXISTS `world`",
                "USE `world`",
                "DROP TABLE IF EXISTS `City`",
                "CREATE TABLE `City` (\n  `Name` char(35) NOT NULL DEFAULT ''\n) ENGINE=InnoDB DEFAULT CHARSET=latin1",
                "INSERT INTO `City` VALUES (1,'Kabul')",
            ]
        );
    }

    /// Bytes biased towards everything the splitter treats specially.
    fn random_sql(rng: &mut StdRng, len: usize) -> Vec<u8> {
        const ATOMS: &[&[u8]] = &[
            b"'",
            b"\"",
            b"`",
            b"\\",
            b";",
            b"--",
            b"-- ",
            b"#",
            b"/*",
            b"*/",
            b"/*!",
            b"/*M!",
            b"/*+",
            b"\n",
            b"\r\n",
            b" ",
            b"DELIMITER ",
            b"delimiter //\n",
            b"//",
            b"$$",
            b"USE ",
            b"\nuse x\n",
            b"SELECT",
            b"a",
            b"1",
            b"\xe9",
            b"\xff",
            b"\0",
            b"''",
            b"(",
            b")",
        ];
        let mut out = Vec::new();
        while out.len() < len {
            if rng.random_bool(0.1) {
                out.push(rng.random::<u8>());
            } else {
                out.extend_from_slice(ATOMS[rng.random_range(0..ATOMS.len())]);
            }
        }
        out
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_pieces_cover_the_input() {
        let mut rng = StdRng::seed_from_u64(0x005e_eddb);
        for round in 0..20_000 {
            let len = rng.random_range(0..120);
            let input = random_sql(&mut rng, len);
            match split(&input) {
                Ok(pieces) => {
                    assert_covers(&input, &pieces);
                    let mut expected = 1;
                    for p in &pieces {
                        if let Some(n) = p.statement_number() {
                            assert_eq!(n, expected, "round {round}: numbering");
                            expected += 1;
                            let bytes = &input[p.range.clone()];
                            assert!(!bytes.is_empty() && !is_space(bytes[bytes.len() - 1]), "trimmed");
                        }
                        assert_eq!(p.line, line_of(&input, p.range.start, 1), "round {round}: line");
                    }
                }
                Err(SplitError::Unterminated { offset, line, .. }) => {
                    assert!(offset < input.len(), "round {round}: offset inside the input");
                    assert_eq!(line, line_of(&input, offset, 1));
                }
                Err(SplitError::BadDelimiter { .. }) => {}
            }
        }
    }

    /// Splits `input` as a stream does: windows that grow by `step` bytes until a cut is
    /// possible, the rest carried over. Pieces are shifted back to dump offsets.
    fn split_streamed(input: &[u8], step: usize) -> Result<Vec<Piece>, SplitError> {
        let mut carry = Carry::default();
        let mut out = Vec::new();
        let mut end = 0;
        loop {
            end = (end + step).min(input.len());
            let eof = end == input.len();
            let start = carry.offset;
            let (pieces, len) = split_window(&input[start..end], eof, &mut carry)?;
            out.extend(pieces.into_iter().map(|p| Piece {
                range: p.range.start + start..p.range.end + start,
                ..p
            }));
            if eof {
                assert_eq!(len, end - start);
                return Ok(out);
            }
        }
    }

    /// Gaps cut at window ends join the next window's first gap in a whole split.
    fn joined_gaps(pieces: Vec<Piece>) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::new();
        for p in pieces {
            if let Some(last) = out.last_mut()
                && last.kind == PieceKind::Gap
                && p.kind == PieceKind::Gap
                && last.range.end == p.range.start
            {
                last.range.end = p.range.end;
                continue;
            }
            out.push(p);
        }
        out
    }

    #[test]
    fn streamed_windows_cut_exactly_what_the_whole_split_cuts() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0002);
        for round in 0..20_000 {
            let len = rng.random_range(0..200);
            let input = random_sql(&mut rng, len);
            let step = rng.random_range(1..40);
            let whole = split(&input);
            let streamed = split_streamed(&input, step).map(joined_gaps);
            assert_eq!(
                streamed,
                whole,
                "round {round}, step {step}: {:?}",
                String::from_utf8_lossy(&input)
            );
        }
        let world = std::fs::read(testbed::world_dump()).unwrap();
        assert_eq!(split_streamed(&world, 4096).map(joined_gaps), split(&world));
    }

    /// Statements built from safe parts, joined with `;`, come back byte for byte.
    #[test]
    fn split_then_join_gives_back_each_statement() {
        const PARTS: &[&[u8]] = &[
            b"SELECT ",
            b"x",
            b"'a;b'",
            b"'it''s'",
            b"'\\';'",
            b"\"q;\\\"\"",
            b"`c;``d`",
            b"/* c; */",
            b"/*!40101 v */",
            b"/*+ h; */",
            b"-- line;\n",
            b"# hash;\n",
            b"\xe9\xef",
            b"\n",
            b"(1,2)",
            b"--1",
        ];
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..5_000 {
            let count = rng.random_range(1..6);
            let mut wanted: Vec<Vec<u8>> = Vec::new();
            let mut input = Vec::new();
            for _ in 0..count {
                let mut s = b"SELECT ".to_vec();
                for _ in 0..rng.random_range(0..6) {
                    s.extend_from_slice(PARTS[rng.random_range(0..PARTS.len())]);
                }
                s.push(b'1');
                input.extend_from_slice(&s);
                input.extend_from_slice(if rng.random_bool(0.5) { b";\n" } else { b";" });
                wanted.push(s);
            }
            let pieces = split(&input).unwrap();
            let got: Vec<&[u8]> = statements(&input, &pieces).map(|(_, b)| b).collect();
            let want: Vec<&[u8]> = wanted.iter().map(Vec::as_slice).collect();
            assert_eq!(got, want, "input {:?}", String::from_utf8_lossy(&input));
            assert_covers(&input, &pieces);
        }
    }
}
