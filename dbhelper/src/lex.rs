//! The one lexer of dbhelper: what is a quote, a comment, a version comment and a space,
//! by the rules of the `mysql`/`mariadb` command-line client (`client/mysql.cc`,
//! `add_line()`), so that dbhelper cuts a dump where the client cuts it.
//!
//! Both the splitter ([`crate::dump`]) and the statement classifier ([`crate::plan`]) scan
//! with these functions and nothing else, so they cannot disagree about where a string or
//! a comment ends. The client's rules, as checked against mariadb 10.11's client:
//! - `'…'` and `"…"` strings take backslash escapes (`\'`), and a doubled quote reads as
//!   the string closing and opening again; `` `…` `` identifiers take no escapes (the client
//!   sends `` `x\` `` as an identifier ending in a backslash).
//! - `#` starts a comment to the end of the line; so does `--` followed by a space, a tab,
//!   a line end or the end of the input, and nothing else: `--` followed by byte 0x7f is not
//!   a comment for the client (it sends `SELECT 3 --\x7f` up to its delimiter).
//! - `/* … */` is a comment; `/*!NNNNN … */` and `/*M!NNNNNN … */` are version comments,
//!   code for the server: the client keeps them, and a delimiter inside them **does** end
//!   the statement (which is why mysqldump wraps triggers in `DELIMITER ;;`); `/*+ … */`
//!   optimizer hints are kept too, and a delimiter inside them does not end the statement.
//! - `/*!999999\- enable the sandbox mode */` and `/*M!999999\-…*/`, the first line newer
//!   mariadb-dump writes, are a client command (`\-`) inside a version comment no server
//!   runs: dbhelper reads them as comments.
//!
//! Everything here is pure, works on bytes (a latin1 dump stays latin1) and never panics.

/// The client's `my_isspace` for the character sets dumps are written in: space, tab,
/// line feed, vertical tab, form feed, carriage return.
#[must_use]
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// A comment to the end of the line starts at `i`: `#`, or `--` followed by a space, a
/// line end or the end of the input.
#[must_use]
pub fn line_comment_at(s: &[u8], i: usize) -> bool {
    match s.get(i) {
        Some(b'#') => true,
        Some(b'-') => s.get(i + 1) == Some(&b'-') && s.get(i + 2).is_none_or(|&c| is_space(c)),
        _ => false,
    }
}

/// The end of the line holding `from`: the index of its `\n`, or the input's end.
#[must_use]
pub fn end_of_line(s: &[u8], from: usize) -> usize {
    s.get(from..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        .map_or(s.len(), |p| from + p)
}

/// What a `/*` at some position opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// A comment the server ignores.
    Comment,
    /// A version comment (`/*!`, `/*M!`): code; a delimiter inside ends the statement.
    Version,
    /// An optimizer hint (`/*+`): code; a delimiter inside does not end the statement.
    Hint,
    /// The sandbox-mode line (`/*!999999\-`, `/*M!999999\-`): a comment for dbhelper.
    Sandbox,
}

/// What the `/*` at `i` opens, and the length of its opener (`/*!` is 3, `/*M!` is 4);
/// `None` when no `/*` is at `i`.
#[must_use]
pub fn block_at(s: &[u8], i: usize) -> Option<(Block, usize)> {
    let rest = s.get(i..)?;
    if !rest.starts_with(b"/*") {
        return None;
    }
    let version = if rest.starts_with(b"/*!") {
        Some(3)
    } else if rest.starts_with(b"/*M!") {
        Some(4)
    } else {
        None
    };
    Some(match version {
        Some(len) if rest[len..].starts_with(b"999999\\-") => (Block::Sandbox, len),
        Some(len) => (Block::Version, len),
        None if rest.starts_with(b"/*+") => (Block::Hint, 3),
        None => (Block::Comment, 2),
    })
}

/// The index after the `*/` closing the block comment opened at `i`; `None` when the
/// input ends first.
#[must_use]
pub fn block_end(s: &[u8], i: usize) -> Option<usize> {
    let from = i + 2;
    s.get(from..)?.windows(2).position(|w| w == b"*/").map(|p| from + p + 2)
}

/// The index after the quote that closes the string or identifier opened at `i` (whose
/// byte is `'`, `"` or `` ` ``); `None` when the input ends first.
#[must_use]
pub fn quoted_end(s: &[u8], i: usize) -> Option<usize> {
    let quote = *s.get(i)?;
    let escapes = quote != b'`';
    let mut j = i + 1;
    loop {
        // Straight to the next quote or backslash (the dump's long strings and blobs are
        // most of its bytes; memchr compares 16 or 32 of them at a time).
        let rest = s.get(j..)?;
        j += if escapes {
            memchr::memchr2(quote, b'\\', rest)?
        } else {
            memchr::memchr(quote, rest)?
        };
        let b = *s.get(j)?;
        if escapes && b == b'\\' {
            j += 2;
            continue;
        }
        if b == quote {
            // A doubled quote is the quote itself (for the client, it closes and reopens:
            // the same place to cut either way).
            if s.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return Some(j + 1);
        }
        j += 1;
    }
}

/// What the code of one statement is, as the server will read it: where its last byte of
/// code ends, whether a `;` splits it into several statements, and whether that code is
/// version comments only. `None` when a string or comment in it does not end.
struct Code {
    end: usize,
    several: bool,
    version: bool,
    plain: bool,
}

fn code(s: &[u8]) -> Option<Code> {
    let mut c = Code {
        end: 0,
        several: false,
        version: false,
        plain: false,
    };
    let mut semicolon = false;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        i = if line_comment_at(s, i) {
            end_of_line(s, i)
        } else if let Some((block, _)) = block_at(s, i) {
            let end = block_end(s, i)?;
            if matches!(block, Block::Version | Block::Hint) {
                // Code for the server; a `;` inside is one more statement (or, in a
                // string there, more than this scan follows).
                c.several |= semicolon || s.get(i..end)?.contains(&b';');
                c.version |= block == Block::Version;
                c.plain |= block == Block::Hint;
                c.end = end;
            }
            end
        } else if b == b';' {
            semicolon = true;
            i + 1
        } else if is_space(b) {
            i + 1
        } else {
            c.several |= semicolon;
            c.plain = true;
            c.end = if matches!(b, b'\'' | b'"' | b'`') {
                quoted_end(s, i)?
            } else {
                i + 1
            };
            c.end
        };
    }
    Some(c)
}

/// Where the statement `s` ends when another statement follows it in one multi-statement
/// packet: the index after its last byte of code, without the spaces, `;` and comments
/// after it (a `;` before a `# note` left there makes the server read an empty statement,
/// a syntax error). `None` when that cannot be done safely: `s` holds several statements
/// for the server (a `DELIMITER $$` dump's `SET @a = 1; SET @b = 2$$`, or a `;` inside a
/// version comment), holds no code at all, or has a string or comment that does not end.
/// Such a statement is sent last in its packet, as it is written, as it would be alone.
#[must_use]
pub fn single_statement_end(s: &[u8]) -> Option<usize> {
    code(s).filter(|c| !c.several && c.end > 0).map(|c| c.end)
}

/// Whether the code of `s` is version comments only (`/*!40101 SET … */`,
/// `/*M!100616 SET … */`, with spaces, `;` and comments around them): a statement a server
/// older than the comment's version reads as empty.
#[must_use]
pub fn only_version_comments(s: &[u8]) -> bool {
    code(s).is_some_and(|c| c.version && !c.plain)
}

/// The contents of the quoted string or identifier `s[i..end]` (as [`quoted_end`] found
/// it), with doubled quotes and, in strings, backslash escapes of the quote or a
/// backslash undone. Used for names only, never for data.
#[must_use]
pub fn unquote(s: &[u8], i: usize, end: usize) -> Vec<u8> {
    let quote = s[i];
    let inner = &s[i + 1..end.saturating_sub(1).max(i + 1)];
    let mut out = Vec::with_capacity(inner.len());
    let mut k = 0;
    while k < inner.len() {
        let b = inner[k];
        if quote != b'`' && b == b'\\' && k + 1 < inner.len() {
            out.push(inner[k + 1]);
            k += 2;
        } else if b == quote && inner.get(k + 1) == Some(&quote) {
            out.push(quote);
            k += 2;
        } else {
            out.push(b);
            k += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_comments_follow_the_client() {
        let cases: &[(&[u8], bool)] = &[
            (b"# x", true),
            (b"#x", true),
            (b"-- x", true),
            (b"--\tx", true),
            (b"--\n", true),
            (b"--\r\n", true),
            (b"--", true),
            (b"--x", false),
            (b"--1", false),
            // The byte the two old scanners disagreed on: not a space for the client.
            (b"--\x7f", false),
            (b"--\x00", false),
            (b"-", false),
            (b"- -", false),
        ];
        for (input, want) in cases {
            assert_eq!(line_comment_at(input, 0), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn a_statement_followed_by_another_ends_at_its_last_code() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"SET @a = 1", Some(b"SET @a = 1")),
            (b"SET @a = 1;", Some(b"SET @a = 1")),
            (b"SET @a = 1 ; ;\n", Some(b"SET @a = 1")),
            (b"SET @a = ';'", Some(b"SET @a = ';'")),
            (b"SET @a = 'it''s;' ;", Some(b"SET @a = 'it''s;'")),
            (b"SET @a = `x;y`", Some(b"SET @a = `x;y`")),
            // The comments after the code go (and a `;` in them is not code).
            (b"SET @a = 1 -- c;", Some(b"SET @a = 1")),
            (b"SET @n = 3; # note\n", Some(b"SET @n = 3")),
            (b"SET @n = 3; /* x; */", Some(b"SET @n = 3")),
            (b"SET @n = 3 /*!999999\\- sandbox */;", Some(b"SET @n = 3")),
            // A comment inside stays; a version comment is code.
            (b"SET /* c */ @a = 1;", Some(b"SET /* c */ @a = 1")),
            (b"/*!40101 SET @c = 1 */;", Some(b"/*!40101 SET @c = 1 */")),
            (
                b"SET @a = 1 /*M!100000 , @b = 2 */ ;",
                Some(b"SET @a = 1 /*M!100000 , @b = 2 */"),
            ),
            // `--` followed by 0x7f is code for the client and the server alike.
            (b"SELECT 3 --\x7f;", Some(b"SELECT 3 --\x7f")),
            // Several statements for the server, or nothing to send: not cut.
            (b"SET @a = 1; SET @b = 2", None),
            (b"SET @a = 1; 'x'", None),
            (b"SET @a = 1; /*!40101 SET @b = 2 */", None),
            (b"/*!40101 SET @a = 1; SET @b = 2 */", None),
            (b";", None),
            (b"-- only a comment\n", None),
            (b"", None),
            // Unterminated: not cut.
            (b"SET @a = 'x", None),
            (b"SET @a = 1 /* x", None),
        ];
        for (input, want) in cases {
            let got = single_statement_end(input).map(|end| &input[..end]);
            assert_eq!(got, *want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn version_comments_only() {
        let cases: &[(&[u8], bool)] = &[
            (b"/*!40101 SET NAMES utf8mb4 */", true),
            (b"/*M!100616 SET @a = 1 */ ;\n", true),
            (b"/*!40101 SET @a = 1 */ /*!40103 SET @b = 2 */", true),
            (b"-- note\n/*!40101 SET @a = 1 */", true),
            (b"SET @a = 1", false),
            (b"/*!40101 SET @a = 1 */ SET @b = 2", false),
            (b"/* plain */", false),
            (b"/*+ hint */", false),
            (b"/*!40101 SET @a = 1", false),
            (b"", false),
        ];
        for (input, want) in cases {
            assert_eq!(
                only_version_comments(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// An input and what [`block_at`] says of it.
    type BlockCase = (&'static [u8], Option<(Block, usize)>);

    #[test]
    fn blocks() {
        let cases: &[BlockCase] = &[
            (b"/* x */", Some((Block::Comment, 2))),
            (b"/**/", Some((Block::Comment, 2))),
            (b"/*!40101 SET x */", Some((Block::Version, 3))),
            (b"/*!*/", Some((Block::Version, 3))),
            (b"/*M!100101 x */", Some((Block::Version, 4))),
            (b"/*+ hint */", Some((Block::Hint, 3))),
            (b"/*!999999\\- enable the sandbox mode */", Some((Block::Sandbox, 3))),
            (b"/*M!999999\\- enable the sandbox mode */", Some((Block::Sandbox, 4))),
            (b"/*M!999999 x */", Some((Block::Version, 4))),
            (b"/ *", None),
            (b"/", None),
        ];
        for (input, want) in cases {
            assert_eq!(block_at(input, 0), *want, "{:?}", String::from_utf8_lossy(input));
        }
        assert_eq!(block_end(b"/* a */ b", 0), Some(7));
        assert_eq!(block_end(b"/*/", 0), None);
        assert_eq!(block_end(b"/**/", 0), Some(4));
    }

    #[test]
    fn quotes() {
        let cases: &[(&[u8], Option<usize>, &[u8])] = &[
            (b"'abc' x", Some(5), b"abc"),
            (b"'it''s'", Some(7), b"it's"),
            (br"'it\'s'", Some(7), b"it's"),
            (br"'\\'", Some(4), br"\"),
            (br#""a\"b""#, Some(6), b"a\"b"),
            (b"`a``b`", Some(6), b"a`b"),
            (br"`a\`", Some(4), br"a\"),
            (b"`a\nb c`", Some(7), b"a\nb c"),
            (b"'\xe9\xff\x00'", Some(5), b"\xe9\xff\x00"),
            (b"''", Some(2), b""),
            (b"``", Some(2), b""),
            (b"'open", None, b""),
            (br"'open\'", None, b""),
            (b"`open", None, b""),
        ];
        for (input, end, inner) in cases {
            assert_eq!(quoted_end(input, 0), *end, "{:?}", String::from_utf8_lossy(input));
            if let Some(end) = end {
                assert_eq!(unquote(input, 0, *end), *inner);
            }
        }
    }

    /// Every function answers the same past the start of the input (the splitter calls
    /// them at every position, not at 0).
    #[test]
    fn the_same_answers_past_the_start() {
        for (input, want) in [
            (&b"-- x"[..], true),
            (b"--", true),
            (b"--x", false),
            (b"#", true),
            (b"-", false),
            (b"x", false),
        ] {
            let s = [b"ab ".as_slice(), input].concat();
            assert_eq!(line_comment_at(&s, 3), want, "{:?}", String::from_utf8_lossy(&s));
        }
        assert_eq!(end_of_line(b"ab\ncd\nef", 3), 5);
        assert_eq!(end_of_line(b"ab\ncd", 3), 5);
        assert_eq!(end_of_line(b"ab\n", 3), 3);
        assert_eq!(end_of_line(b"ab", 7), 2, "past the end: the end");
        assert_eq!(block_at(b"x /*!40101 y */", 2), Some((Block::Version, 3)));
        assert_eq!(block_at(b"x /*M!999999\\- z */", 2), Some((Block::Sandbox, 4)));
        assert_eq!(block_at(b"x /* y */", 1), None);
        assert_eq!(block_end(b"x /* a */ b", 2), Some(9));
        // A `*/` before the opener, or its own `/*` read as `*/`, closes nothing.
        assert_eq!(block_end(b"*/ /* a", 3), None);
        assert_eq!(block_end(b"x /*/ a", 2), None);
        assert_eq!(quoted_end(b"x 'a''b' c", 2), Some(8));
        assert_eq!(unquote(b"x 'a''b' c", 2, 8), b"a'b");
        assert_eq!(quoted_end(b"x `a\\` c", 2), Some(6));
        assert_eq!(unquote(b"x `a\\` c", 2, 6), b"a\\");
    }

    /// A backslash that ends a string's contents is kept (it escapes nothing), whatever
    /// `end` a caller passes.
    #[test]
    fn unquote_keeps_a_trailing_backslash() {
        assert_eq!(unquote(br"'a\'", 0, 4), br"a\");
        assert_eq!(unquote(b"'ab'", 0, 1), b"", "an end before the contents: nothing");
    }

    /// Only a doubled quote is undone: a lone one inside the span (an `end` past it) is
    /// kept, and the byte after it too.
    #[test]
    fn unquote_undoes_only_doubled_quotes() {
        assert_eq!(unquote(b"'a'b'", 0, 5), b"a'b");
        assert_eq!(unquote(b"`a`b`", 0, 5), b"a`b");
        assert_eq!(unquote(b"'a''b'", 0, 6), b"a'b");
    }
}
