//! The load plan: the dump's statements turned into the steps the loader sends.
//!
//! Two things happen here, both pure (no I/O, bytes never decoded):
//! - **database statements are redirected**: the dump's `USE db`, `CREATE DATABASE db …`
//!   and `DROP DATABASE db` name the database the dump came from; the loader must put the
//!   tables into its staging database instead. `USE` becomes "use the staging database",
//!   `CREATE DATABASE`'s options (character set, collation) become an `ALTER DATABASE` of
//!   the staging database, `DROP DATABASE` is dropped (the swap replaces the tables). A dump
//!   that names two different databases is refused: dbhelper seeds one database.
//! - **single-row inserts are merged**: consecutive `INSERT … VALUES (…)` statements with
//!   byte-identical heads (`INSERT INTO `City` VALUES `) become one multi-row insert, up to
//!   a size limit (the server's `max_allowed_packet`), so a mysqldump written one row per
//!   statement loads in a few round trips. Only statements of exactly that shape merge:
//!   anything after the row list (`ON DUPLICATE KEY UPDATE`, a comment) keeps a statement
//!   on its own.
//!
//! Every step remembers which dump statements it covers, so an error names them.

use std::borrow::Cow;
use std::ops::RangeInclusive;

use crate::dump::{Piece, PieceKind};

/// What one statement is, as far as the loader cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `USE db`.
    Use {
        /// The database name (unquoted bytes).
        name: Vec<u8>,
    },
    /// `CREATE DATABASE|SCHEMA [IF NOT EXISTS] db <options>`.
    CreateDatabase {
        /// The database name (unquoted bytes).
        name: Vec<u8>,
        /// What follows the name, ready to follow `ALTER DATABASE x`; `None` when nothing does.
        options: Option<Cow<'a, [u8]>>,
    },
    /// `DROP DATABASE|SCHEMA [IF EXISTS] db`.
    DropDatabase {
        /// The database name (unquoted bytes).
        name: Vec<u8>,
    },
    /// `INSERT … VALUES (…)[, (…)]` with nothing after the rows: can be merged.
    Insert {
        /// Everything before the first row, the merge key.
        head: &'a [u8],
        /// The rows: `(…),(…)`.
        rows: &'a [u8],
    },
    /// Anything else: sent as it is.
    Other,
}

/// What the loader does for one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Switch the load connection to the staging database.
    UseStaging,
    /// `ALTER DATABASE <staging> <options>`: the dump's database options.
    AlterStaging(Cow<'a, [u8]>),
    /// Send these bytes as they are.
    Sql(Cow<'a, [u8]>),
}

/// One round trip of the load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step<'a> {
    /// What to send.
    pub action: Action<'a>,
    /// The dump statements (1-based numbers) this step covers.
    pub statements: RangeInclusive<usize>,
    /// The line of the first of them.
    pub line: usize,
    /// How many bytes of the dump are done once this step is.
    pub done_bytes: usize,
}

/// The whole load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<'a> {
    /// The steps, in order.
    pub steps: Vec<Step<'a>>,
    /// The database the dump names (`USE`, `CREATE DATABASE`), if any.
    pub source_database: Option<String>,
    /// How many statements the dump holds.
    pub statements: usize,
}

/// Why a dump cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The dump names two different databases.
    #[error(
        "the dump uses more than one database ({first:?} at line {first_line}, {second:?} at line {second_line}); dbhelper seeds one database"
    )]
    MultipleDatabases {
        /// The first database named.
        first: String,
        /// Where.
        first_line: usize,
        /// The other one.
        second: String,
        /// Where.
        second_line: usize,
    },
}

/// Builds the plan; merged inserts stay at or under `max_statement` bytes (a single
/// statement that is larger on its own is sent as it is).
///
/// # Errors
/// [`PlanError::MultipleDatabases`].
pub fn plan<'a>(input: &'a [u8], pieces: &[Piece], max_statement: usize) -> Result<Plan<'a>, PlanError> {
    let mut steps = Vec::new();
    let mut source: Option<(Vec<u8>, usize)> = None;
    let mut pending: Option<Merge<'a>> = None;
    let mut statements = 0;

    for piece in pieces {
        let PieceKind::Statement { number, .. } = piece.kind else {
            continue;
        };
        statements = number;
        let bytes = &input[piece.range.clone()];
        let done = piece.range.end;
        let one = |action| Step {
            action,
            statements: number..=number,
            line: piece.line,
            done_bytes: done,
        };
        let kind = classify(bytes);
        if let Kind::Use { name } | Kind::CreateDatabase { name, .. } | Kind::DropDatabase { name } = &kind {
            match &source {
                None => source = Some((name.clone(), piece.line)),
                Some((first, first_line)) if first != name => {
                    return Err(PlanError::MultipleDatabases {
                        first: lossy(first),
                        first_line: *first_line,
                        second: lossy(name),
                        second_line: piece.line,
                    });
                }
                Some(_) => {}
            }
        }
        if let Kind::Insert { head, rows } = kind {
            let fits = |m: &&mut Merge<'a>| m.head == head && m.len() + 1 + rows.len() <= max_statement;
            if let Some(m) = pending.as_mut().filter(fits) {
                m.push(rows, number, done);
                continue;
            }
            if let Some(m) = pending.take() {
                steps.push(m.into_step());
            }
            pending = Some(Merge::new(bytes, head, rows, number, piece.line, done));
            continue;
        }
        if let Some(m) = pending.take() {
            steps.push(m.into_step());
        }
        match kind {
            Kind::Use { .. } => steps.push(one(Action::UseStaging)),
            Kind::CreateDatabase {
                options: Some(options), ..
            } => steps.push(one(Action::AlterStaging(options))),
            Kind::CreateDatabase { options: None, .. } | Kind::DropDatabase { .. } => {}
            Kind::Insert { .. } | Kind::Other => steps.push(one(Action::Sql(Cow::Borrowed(bytes)))),
        }
    }
    if let Some(m) = pending.take() {
        steps.push(m.into_step());
    }
    Ok(Plan {
        steps,
        source_database: source.map(|(name, _)| lossy(&name)),
        statements,
    })
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Consecutive inserts with the same head being merged.
struct Merge<'a> {
    /// The first statement, sent as it is when nothing joins it.
    original: &'a [u8],
    head: &'a [u8],
    /// `head` + rows so far, built once a second statement joins.
    merged: Option<Vec<u8>>,
    rows_len: usize,
    first: usize,
    last: usize,
    line: usize,
    done: usize,
}

impl<'a> Merge<'a> {
    fn new(original: &'a [u8], head: &'a [u8], rows: &'a [u8], number: usize, line: usize, done: usize) -> Self {
        Merge {
            original,
            head,
            merged: None,
            rows_len: rows.len(),
            first: number,
            last: number,
            line,
            done,
        }
    }

    fn len(&self) -> usize {
        self.head.len() + self.rows_len
    }

    fn push(&mut self, rows: &[u8], number: usize, done: usize) {
        let merged = self.merged.get_or_insert_with(|| {
            let first_rows = &self.original[self.head.len()..self.head.len() + self.rows_len];
            let mut v = Vec::with_capacity(64 * 1024);
            v.extend_from_slice(self.head);
            v.extend_from_slice(first_rows);
            v
        });
        merged.push(b',');
        merged.extend_from_slice(rows);
        self.rows_len += 1 + rows.len();
        self.last = number;
        self.done = done;
    }

    fn into_step(self) -> Step<'a> {
        Step {
            action: Action::Sql(match self.merged {
                Some(v) => Cow::Owned(v),
                None => Cow::Borrowed(self.original),
            }),
            statements: self.first..=self.last,
            line: self.line,
            done_bytes: self.done,
        }
    }
}

/// A token of a statement, for classification only.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// An unquoted word (keyword or name), as written.
    Word(Vec<u8>),
    /// A `` `quoted` `` identifier, unquoted.
    Quoted(Vec<u8>),
    /// A string literal (contents not kept).
    Str,
    /// Any other single byte.
    Punct(u8),
}

/// Reads tokens, treating comments as space and the markers of version comments as
/// transparent (their contents are code).
struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
    in_code_comment: bool,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl<'a> Lexer<'a> {
    fn new(s: &'a [u8]) -> Self {
        Lexer {
            s,
            pos: 0,
            in_code_comment: false,
        }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.s.get(i).copied()
    }

    /// Skips whitespace, comments and version-comment markers.
    fn skip_space(&mut self) {
        loop {
            let Some(b) = self.at(self.pos) else { return };
            let next = self.at(self.pos + 1);
            if b.is_ascii_whitespace() || b == 0x0b {
                self.pos += 1;
            } else if b == b'#' || (b == b'-' && next == Some(b'-') && self.at(self.pos + 2).is_none_or(|c| c <= b' '))
            {
                while self.at(self.pos).is_some_and(|c| c != b'\n') {
                    self.pos += 1;
                }
            } else if b == b'*' && next == Some(b'/') && self.in_code_comment {
                self.in_code_comment = false;
                self.pos += 2;
            } else if b == b'/' && next == Some(b'*') {
                let rest = &self.s[self.pos..];
                let opener = if rest.starts_with(b"/*!") || rest.starts_with(b"/*+") {
                    Some(3)
                } else if rest.starts_with(b"/*M!") {
                    Some(4)
                } else {
                    None
                };
                match opener {
                    Some(len) if !self.in_code_comment => {
                        self.in_code_comment = true;
                        self.pos += len;
                        while self.at(self.pos).is_some_and(|c| c.is_ascii_digit()) {
                            self.pos += 1;
                        }
                    }
                    _ => match rest[2..].windows(2).position(|w| w == b"*/") {
                        Some(p) => self.pos += 2 + p + 2,
                        None => self.pos = self.s.len(),
                    },
                }
            } else {
                return;
            }
        }
    }

    fn next(&mut self) -> Option<Token> {
        self.skip_space();
        let b = self.at(self.pos)?;
        match b {
            b'`' => {
                let mut name = Vec::new();
                let mut i = self.pos + 1;
                while let Some(c) = self.at(i) {
                    if c == b'`' {
                        if self.at(i + 1) == Some(b'`') {
                            name.push(b'`');
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    name.push(c);
                    i += 1;
                }
                self.pos = (i + 1).min(self.s.len());
                Some(Token::Quoted(name))
            }
            b'\'' | b'"' => {
                let mut i = self.pos + 1;
                while let Some(c) = self.at(i) {
                    if c == b'\\' {
                        i += 2;
                        continue;
                    }
                    if c == b {
                        break;
                    }
                    i += 1;
                }
                self.pos = (i + 1).min(self.s.len());
                Some(Token::Str)
            }
            _ if is_word_byte(b) => {
                let start = self.pos;
                while self.at(self.pos).is_some_and(is_word_byte) {
                    self.pos += 1;
                }
                Some(Token::Word(self.s[start..self.pos].to_vec()))
            }
            _ => {
                self.pos += 1;
                Some(Token::Punct(b))
            }
        }
    }

    /// The next token if it is the keyword `kw` (case-insensitive); otherwise nothing moves.
    fn keyword(&mut self, kw: &str) -> bool {
        let (pos, inside) = (self.pos, self.in_code_comment);
        match self.next() {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw.as_bytes()) => true,
            _ => {
                self.pos = pos;
                self.in_code_comment = inside;
                false
            }
        }
    }

    /// The next token as a name (unquoted word or backtick identifier).
    fn name(&mut self) -> Option<Vec<u8>> {
        match self.next()? {
            Token::Word(w) | Token::Quoted(w) => Some(w),
            _ => None,
        }
    }

    /// Whether a word token follows before the end.
    fn has_word(&mut self) -> bool {
        while let Some(t) = self.next() {
            if matches!(t, Token::Word(_)) {
                return true;
            }
        }
        false
    }
}

/// Classifies one statement.
#[must_use]
pub fn classify(stmt: &[u8]) -> Kind<'_> {
    let mut lx = Lexer::new(stmt);
    let Some(Token::Word(first)) = lx.next() else {
        return Kind::Other;
    };
    let is = |kw: &str| first.eq_ignore_ascii_case(kw.as_bytes());
    if is("use") {
        return match lx.name() {
            // `USE db` and nothing else but comments.
            Some(name) if lx.next().is_none() => Kind::Use { name },
            _ => Kind::Other,
        };
    }
    if is("create") || is("drop") {
        if !(lx.keyword("database") || lx.keyword("schema")) {
            return Kind::Other;
        }
        if is("create") {
            let _ = lx.keyword("if") && lx.keyword("not") && lx.keyword("exists");
        } else {
            let _ = lx.keyword("if") && lx.keyword("exists");
        }
        let Some(name) = lx.name() else {
            return Kind::Other;
        };
        if is("drop") {
            return Kind::DropDatabase { name };
        }
        let (rest_at, inside) = (lx.pos, lx.in_code_comment);
        if !lx.has_word() {
            return Kind::CreateDatabase { name, options: None };
        }
        let rest = &stmt[rest_at..];
        let options = if inside {
            // The name sat inside a version comment that the options close: reopen it.
            let mut v = b"/*!".to_vec();
            v.extend_from_slice(rest);
            Cow::Owned(v)
        } else {
            Cow::Borrowed(rest)
        };
        return Kind::CreateDatabase {
            name,
            options: Some(options),
        };
    }
    if is("insert") || is("replace") {
        return insert(stmt, lx);
    }
    Kind::Other
}

/// `INSERT [modifiers] [INTO] name[.name] [(columns)] VALUES (…)[,(…)]` and nothing after.
fn insert<'a>(stmt: &'a [u8], mut lx: Lexer<'a>) -> Kind<'a> {
    loop {
        match lx.next() {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case(b"values") || w.eq_ignore_ascii_case(b"value") => break,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case(b"select") || w.eq_ignore_ascii_case(b"set") => {
                return Kind::Other;
            }
            Some(Token::Punct(b'(')) => {
                // A column list: skip to its `)`.
                match group_end(stmt, lx.pos - 1) {
                    Some(end) => lx.pos = end,
                    None => return Kind::Other,
                }
            }
            Some(_) => {}
            None => return Kind::Other,
        }
    }
    if lx.in_code_comment {
        return Kind::Other;
    }
    lx.skip_space();
    if lx.in_code_comment {
        return Kind::Other;
    }
    let rows_start = lx.pos;
    let mut i = rows_start;
    loop {
        if stmt.get(i) != Some(&b'(') {
            return Kind::Other;
        }
        let Some(end) = group_end(stmt, i) else {
            return Kind::Other;
        };
        let mut j = end;
        while stmt.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        match stmt.get(j) {
            None => {
                return Kind::Insert {
                    head: &stmt[..rows_start],
                    rows: &stmt[rows_start..end],
                };
            }
            Some(b',') => {
                i = j + 1;
                while stmt.get(i).is_some_and(u8::is_ascii_whitespace) {
                    i += 1;
                }
            }
            Some(_) => return Kind::Other,
        }
    }
}

/// The index after the `)` that closes the `(` at `open`; `None` when a comment (which
/// could hide a parenthesis) or the end comes first.
fn group_end(s: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while let Some(&b) = s.get(i) {
        match b {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b'\'' | b'"' | b'`' => {
                let escapes = b != b'`';
                i += 1;
                loop {
                    let c = *s.get(i)?;
                    if escapes && c == b'\\' {
                        i += 2;
                        continue;
                    }
                    if c == b {
                        break;
                    }
                    i += 1;
                }
            }
            b'#' => return None,
            b'-' if s.get(i + 1) == Some(&b'-') => return None,
            b'/' if s.get(i + 1) == Some(&b'*') => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::dump::split;

    fn s(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn classify_table() {
        let name = |n: &str| n.as_bytes().to_vec();
        let cases: &[(&str, Kind<'_>)] = &[
            ("USE `world`", Kind::Use { name: name("world") }),
            ("use world -- comment", Kind::Use { name: name("world") }),
            ("USE `we``ird`", Kind::Use { name: name("we`ird") }),
            ("USE world extra", Kind::Other),
            ("USE", Kind::Other),
            (
                "CREATE DATABASE IF NOT EXISTS `world`",
                Kind::CreateDatabase {
                    name: name("world"),
                    options: None,
                },
            ),
            (
                "CREATE DATABASE /*!32312 IF NOT EXISTS*/ `world` /*!40100 DEFAULT CHARACTER SET latin1 */",
                Kind::CreateDatabase {
                    name: name("world"),
                    options: Some(Cow::Borrowed(b" /*!40100 DEFAULT CHARACTER SET latin1 */")),
                },
            ),
            (
                "/*!40000 CREATE SCHEMA w DEFAULT CHARSET utf8 */",
                Kind::CreateDatabase {
                    name: name("w"),
                    options: Some(Cow::Owned(b"/*! DEFAULT CHARSET utf8 */".to_vec())),
                },
            ),
            (
                "/*!40000 CREATE DATABASE w */",
                Kind::CreateDatabase {
                    name: name("w"),
                    options: None,
                },
            ),
            (
                "/*!40000 DROP DATABASE IF EXISTS `world`*/",
                Kind::DropDatabase { name: name("world") },
            ),
            ("drop schema w", Kind::DropDatabase { name: name("w") }),
            ("DROP TABLE IF EXISTS `City`", Kind::Other),
            ("CREATE TABLE `City` (a int)", Kind::Other),
            (
                "INSERT INTO `City` VALUES (1,'Kabul','AFG','Kabol',1780000)",
                Kind::Insert {
                    head: b"INSERT INTO `City` VALUES ",
                    rows: b"(1,'Kabul','AFG','Kabol',1780000)",
                },
            ),
            (
                "insert ignore into t (a, `b`) values (1,'x)'),(2, ')(')",
                Kind::Insert {
                    head: b"insert ignore into t (a, `b`) values ",
                    rows: b"(1,'x)'),(2, ')(')",
                },
            ),
            (
                "REPLACE t VALUE (1)",
                Kind::Insert {
                    head: b"REPLACE t VALUE ",
                    rows: b"(1)",
                },
            ),
            (
                r"INSERT INTO t VALUES ('a\')')",
                Kind::Insert {
                    head: b"INSERT INTO t VALUES ",
                    rows: br"('a\')')",
                },
            ),
            ("INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a=1", Kind::Other),
            ("INSERT INTO t VALUES (1) -- note", Kind::Other),
            ("INSERT INTO t VALUES (1 /* ) */)", Kind::Other),
            ("INSERT INTO t SELECT * FROM u", Kind::Other),
            ("INSERT INTO t SET a=1", Kind::Other),
            ("INSERT INTO t VALUES (1", Kind::Other),
            ("/*!40000 INSERT INTO t VALUES (1) */", Kind::Other),
            ("SELECT 1", Kind::Other),
            ("", Kind::Other),
            ("(", Kind::Other),
        ];
        for (input, want) in cases {
            assert_eq!(&classify(input.as_bytes()), want, "input {input:?}");
        }
    }

    #[test]
    fn classify_never_panics_on_prefixes() {
        let samples: &[&[u8]] = &[
            b"INSERT INTO `t` (a) VALUES ('x\\'',\"y\"),(`z`)",
            b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `w``x` /*!40100 DEFAULT CHARACTER SET latin1 */",
            b"/*M!100101 USE `a` */ -- x\n# y\n",
        ];
        for s in samples {
            for end in 0..=s.len() {
                let _ = classify(&s[..end]);
            }
        }
    }

    fn steps(input: &str, max: usize) -> Vec<(String, RangeInclusive<usize>)> {
        let pieces = split(input.as_bytes()).unwrap();
        plan(input.as_bytes(), &pieces, max)
            .unwrap()
            .steps
            .into_iter()
            .map(|st| {
                let text = match st.action {
                    Action::UseStaging => "<use staging>".to_owned(),
                    Action::AlterStaging(o) => format!("<alter staging>{}", s(&o)),
                    Action::Sql(b) => s(&b),
                };
                (text, st.statements)
            })
            .collect()
    }

    #[test]
    fn consecutive_single_row_inserts_merge() {
        let input = "CREATE DATABASE IF NOT EXISTS `world` ;\nUSE `world`\n\
                     INSERT INTO `A` VALUES (1,'a;');\nINSERT INTO `A` VALUES (2,'b');\n\
                     INSERT INTO `B` VALUES (3);\nINSERT INTO `B` VALUES (4),(5);\n\
                     SET @x=1;\nINSERT INTO `B` VALUES (6);\n\
                     INSERT INTO `B` VALUES (7) ON DUPLICATE KEY UPDATE a=1;\n";
        assert_eq!(
            steps(input, 1 << 20),
            vec![
                ("<use staging>".to_owned(), 2..=2),
                ("INSERT INTO `A` VALUES (1,'a;'),(2,'b')".to_owned(), 3..=4),
                ("INSERT INTO `B` VALUES (3),(4),(5)".to_owned(), 5..=6),
                ("SET @x=1".to_owned(), 7..=7),
                ("INSERT INTO `B` VALUES (6)".to_owned(), 8..=8),
                (
                    "INSERT INTO `B` VALUES (7) ON DUPLICATE KEY UPDATE a=1".to_owned(),
                    9..=9
                ),
            ]
        );
    }

    #[test]
    fn merges_stay_under_the_limit() {
        let input =
            "INSERT INTO t VALUES (1);INSERT INTO t VALUES (2);INSERT INTO t VALUES (3);INSERT INTO t VALUES (4);";
        // "INSERT INTO t VALUES (1),(2)" is 28 bytes.
        assert_eq!(
            steps(input, 28),
            vec![
                ("INSERT INTO t VALUES (1),(2)".to_owned(), 1..=2),
                ("INSERT INTO t VALUES (3),(4)".to_owned(), 3..=4),
            ]
        );
        // A limit below one statement sends each alone, never drops one.
        assert_eq!(steps(input, 5).len(), 4);
    }

    #[test]
    fn database_options_go_to_the_staging_database() {
        let input = "/*!40000 DROP DATABASE IF EXISTS `w`*/;\nCREATE DATABASE /*!32312 IF NOT EXISTS*/ `w` /*!40100 DEFAULT CHARACTER SET latin1 */;\nUSE `w`;\nCREATE TABLE t (a int);";
        assert_eq!(
            steps(input, 1 << 20),
            vec![
                (
                    "<alter staging> /*!40100 DEFAULT CHARACTER SET latin1 */".to_owned(),
                    2..=2
                ),
                ("<use staging>".to_owned(), 3..=3),
                ("CREATE TABLE t (a int)".to_owned(), 4..=4),
            ]
        );
    }

    #[test]
    fn two_databases_are_refused() {
        let input = "USE a\nCREATE TABLE t (x int);\nUSE b\n";
        let pieces = split(input.as_bytes()).unwrap();
        let err = plan(input.as_bytes(), &pieces, 1 << 20).unwrap_err();
        assert_eq!(
            err,
            PlanError::MultipleDatabases {
                first: "a".into(),
                first_line: 1,
                second: "b".into(),
                second_line: 3
            }
        );
        assert!(err.to_string().contains("\"b\" at line 3"), "{err}");
    }

    /// Random single-row inserts into two tables, with tricky values, planned with random
    /// limits: every row comes out exactly once, in order, in a statement for its table.
    #[test]
    fn merging_keeps_every_row_in_order() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        const VALUES: &[&str] = &[
            "1", "'a,b'", "'(x)'", "'it''s'", r"'\')'", "NULL", "'\u{e9}'", "-2.5", "\"q\"",
        ];
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let mut input = String::new();
            let mut want: Vec<(char, String)> = Vec::new();
            for _ in 0..rng.random_range(1..30) {
                let table = if rng.random_bool(0.5) { 'A' } else { 'B' };
                let cols: Vec<&str> = (0..rng.random_range(1..4))
                    .map(|_| VALUES[rng.random_range(0..VALUES.len())])
                    .collect();
                let row = format!("({})", cols.join(","));
                input.push_str(&format!("INSERT INTO `{table}` VALUES {row};\n"));
                if rng.random_bool(0.1) {
                    input.push_str("SET @x = 1;\n");
                }
                want.push((table, row));
            }
            let limit = rng.random_range(1..200);
            let pieces = split(input.as_bytes()).unwrap();
            let p = plan(input.as_bytes(), &pieces, limit).unwrap();
            let mut got: Vec<(char, String)> = Vec::new();
            for step in &p.steps {
                let Action::Sql(bytes) = &step.action else {
                    panic!("only SQL steps")
                };
                match classify(bytes) {
                    Kind::Insert { head, rows } => {
                        let table = if head.starts_with(b"INSERT INTO `A`") { 'A' } else { 'B' };
                        // Split the merged rows back at the top-level "),(".
                        let rows = s(rows);
                        let mut depth = 0;
                        let mut start = 0;
                        let mut quote: Option<char> = None;
                        let mut escaped = false;
                        for (i, c) in rows.char_indices() {
                            if let Some(q) = quote {
                                if escaped {
                                    escaped = false;
                                } else if c == '\\' {
                                    escaped = true;
                                } else if c == q {
                                    quote = None;
                                }
                                continue;
                            }
                            match c {
                                '\'' | '"' => quote = Some(c),
                                '(' => depth += 1,
                                ')' => {
                                    depth -= 1;
                                    if depth == 0 {
                                        got.push((table, rows[start..=i].to_owned()));
                                    }
                                }
                                ',' if depth == 0 => start = i + 1,
                                _ => {}
                            }
                        }
                        let merged = step.statements.start() != step.statements.end();
                        assert!(!merged || bytes.len() <= limit, "a merge stays under the limit");
                    }
                    Kind::Other => assert_eq!(s(bytes), "SET @x = 1"),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(got, want, "limit {limit}, input {input}");
        }
    }

    /// The real world dump: one database, one single-row insert per row, merged into one
    /// insert per table when the limit allows.
    #[test]
    fn the_world_dump_plans_into_one_insert_per_table() {
        let input = std::fs::read(testbed::world_dump()).unwrap();
        let pieces = split(&input).unwrap();
        let mut rows: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
        for (_, bytes) in crate::dump::statements(&input, &pieces) {
            if let Kind::Insert { head, .. } = classify(bytes) {
                *rows.entry(s(head)).or_default() += 1;
            }
        }
        assert_eq!(
            rows.into_iter().collect::<Vec<_>>(),
            [
                ("INSERT INTO `City` VALUES ".to_owned(), 4079),
                ("INSERT INTO `CountryLanguage` VALUES ".to_owned(), 984),
                ("INSERT INTO `Country` VALUES ".to_owned(), 239),
            ]
        );
        let p = plan(&input, &pieces, 16 << 20).unwrap();
        assert_eq!(p.source_database.as_deref(), Some("world"));
        let inserts: Vec<RangeInclusive<usize>> = p
            .steps
            .iter()
            .filter(|st| matches!(&st.action, Action::Sql(b) if b.starts_with(b"INSERT")))
            .map(|st| st.statements.clone())
            .collect();
        assert_eq!(inserts.len(), 3, "{inserts:?}");
        assert_eq!(
            inserts.iter().map(|r| r.end() - r.start() + 1).sum::<usize>(),
            4079 + 239 + 984
        );
        // `CREATE DATABASE IF NOT EXISTS `world`` has no options: nothing to send for it.
        assert!(!p.steps.iter().any(|st| matches!(st.action, Action::AlterStaging(_))));
        assert_eq!(p.steps.iter().filter(|st| st.action == Action::UseStaging).count(), 1);
    }

    #[test]
    fn classify_never_panics_on_random_bytes() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        const ATOMS: &[&[u8]] = &[
            b"INSERT ",
            b"INTO ",
            b"VALUES ",
            b"CREATE ",
            b"DATABASE ",
            b"USE ",
            b"DROP ",
            b"IF NOT EXISTS ",
            b"(",
            b")",
            b",",
            b"'",
            b"\"",
            b"`",
            b"\\",
            b"/*!40101 ",
            b"/*M!",
            b"*/",
            b"/* ",
            b"-- ",
            b"#",
            b"\n",
            b"x",
            b"\xe9",
        ];
        let mut rng = StdRng::seed_from_u64(99);
        for _ in 0..20_000 {
            let mut stmt = Vec::new();
            for _ in 0..rng.random_range(0..16) {
                stmt.extend_from_slice(ATOMS[rng.random_range(0..ATOMS.len())]);
            }
            let _ = classify(&stmt);
        }
    }

    #[test]
    fn done_bytes_grow_to_the_last_statement() {
        let input = "SELECT 1;\nINSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2);\n-- end\n";
        let pieces = split(input.as_bytes()).unwrap();
        let p = plan(input.as_bytes(), &pieces, 1 << 20).unwrap();
        let done: Vec<usize> = p.steps.iter().map(|s| s.done_bytes).collect();
        assert_eq!(done, vec![8, input.find("(2)").unwrap() + 3]);
        assert_eq!(p.statements, 3);
    }
}
