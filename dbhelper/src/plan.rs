//! The load plan: the dump's statements turned into the steps the loader sends, in two
//! phases.
//!
//! Pure (no I/O, bytes never decoded). What happens here:
//! - **databases are found and mapped**: the dump's `USE db` and `CREATE DATABASE db …`
//!   name the databases it loads ([`Database`], in order of appearance); the loader puts
//!   each one's tables into a staging database. `USE` becomes "use this database's staging
//!   (or, after the swap, live) database", `CREATE DATABASE`'s options are applied to
//!   both, `DROP DATABASE` is dropped (the swap replaces the tables). The system schemas
//!   (`mysql`, `sys`, `performance_schema`, `information_schema`) are never staged: a dump
//!   that writes them is refused unless the caller asks to replay those statements after
//!   the swap, as the client would run them.
//! - **statements are sorted into two phases**: tables and their rows
//!   ([`Plan::tables`]) load into the staging databases, before the swap; views,
//!   triggers, procedures, functions and events ([`Plan::objects`]), which cannot move
//!   between databases with `RENAME TABLE`, are created in the live databases right after
//!   it. Session `SET`s and `USE`s go to both phases, in dump order, so each object is
//!   created under the `sql_mode` and character sets the dump set for it.
//! - **single-row inserts are merged**: consecutive `INSERT … VALUES (…)` statements with
//!   byte-identical heads become one multi-row insert, up to a size limit (the server's
//!   `max_allowed_packet`). Only statements of exactly that shape merge.
//!
//! Every step remembers which dump statements it covers, so an error names them.

use std::borrow::Cow;
use std::ops::{Range, RangeInclusive};

use crate::dump::{Piece, PieceKind};
use crate::lex::{self, Block};

/// A kind of object that lives in a database but is not a base table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKind {
    /// `VIEW`.
    View,
    /// `TRIGGER`.
    Trigger,
    /// `PROCEDURE`.
    Procedure,
    /// `FUNCTION` (stored or aggregate).
    Function,
    /// `EVENT`.
    Event,
}

impl ObjectKind {
    /// The SQL keyword.
    #[must_use]
    pub fn keyword(self) -> &'static str {
        match self {
            ObjectKind::View => "VIEW",
            ObjectKind::Trigger => "TRIGGER",
            ObjectKind::Procedure => "PROCEDURE",
            ObjectKind::Function => "FUNCTION",
            ObjectKind::Event => "EVENT",
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::View => "view",
            ObjectKind::Trigger => "trigger",
            ObjectKind::Procedure => "procedure",
            ObjectKind::Function => "function",
            ObjectKind::Event => "event",
        })
    }
}

/// What a statement does to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `CREATE [OR REPLACE]`.
    Create,
    /// `ALTER`.
    Alter,
    /// `DROP`.
    Drop,
}

/// The `DEFINER=user@host` of a `CREATE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definer {
    /// The user name (unquoted bytes).
    pub user: Vec<u8>,
    /// The host (unquoted bytes).
    pub host: Vec<u8>,
    /// Where `user@host` is in the statement, to be replaced by `CURRENT_USER` when that
    /// account does not exist on the target server.
    pub span: Range<usize>,
}

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
    /// `ALTER DATABASE|SCHEMA db <options>` (mysqldump switches a database's collation
    /// around routines created under another one).
    AlterDatabase {
        /// The database name (unquoted bytes).
        name: Vec<u8>,
        /// What follows the name.
        options: Cow<'a, [u8]>,
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
    /// `SET …`: session settings, needed in both phases.
    Set,
    /// A statement on the server's accounts (`CREATE USER`, `GRANT`, `CREATE ROLE`,
    /// `SET ROLE`, …, as `mariadb-dump --system=users` writes them): the `mysql` schema's
    /// data, never staged; its first words, for messages.
    Account(String),
    /// `CREATE|ALTER|DROP` of a view, trigger, routine or event.
    Object {
        /// What the statement does.
        verb: Verb,
        /// What it does it to.
        kind: ObjectKind,
        /// The object's name (unquoted bytes; `None` when it could not be read).
        name: Option<Vec<u8>>,
        /// Its `DEFINER`, when a `CREATE` names one.
        definer: Option<Definer>,
    },
    /// Anything else: sent as it is, before the swap.
    Other,
}

/// One database the dump loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Database {
    /// Its name in the dump; `None` for a dump that names no database.
    pub name: Option<String>,
    /// The options of its `CREATE DATABASE`, ready to follow `CREATE DATABASE x`.
    pub options: Option<Vec<u8>>,
    /// One of the server's own schemas: never staged, its statements replayed after the swap.
    pub system: bool,
    /// The line that first names it.
    pub line: usize,
}

/// What the loader does for one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Switch the connection to this database (an index into [`Plan::databases`]): its
    /// staging database before the swap, the live one after.
    Use(usize),
    /// `ALTER DATABASE <that database> <options>`.
    AlterDatabase(usize, Cow<'a, [u8]>),
    /// Send these bytes as they are.
    Sql(Cow<'a, [u8]>),
    /// Create, alter or drop an object (after the swap).
    Object {
        /// What the statement does.
        verb: Verb,
        /// What it does it to.
        kind: ObjectKind,
        /// The object's name, when read.
        name: Option<Vec<u8>>,
        /// Its definer, to check on the target server.
        definer: Option<Definer>,
        /// The statement.
        sql: Cow<'a, [u8]>,
    },
}

impl Action<'_> {
    /// The bytes of the dump it sends (none for the statements dbhelper writes itself).
    #[must_use]
    pub fn sql_len(&self) -> usize {
        match self {
            Action::Use(_) => 0,
            Action::AlterDatabase(_, options) => options.len(),
            Action::Sql(sql) | Action::Object { sql, .. } => sql.len(),
        }
    }
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
    /// When several inserts were merged into this step: where each one's rows are, to
    /// replay them one by one and name the one the server refuses.
    pub merged: Option<Merged>,
}

/// The inserts a merged step is made of: the shared head `sql[..head]`, then each
/// statement's rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    /// Length of the shared `INSERT INTO t VALUES ` head.
    pub head: usize,
    /// Each statement's rows in the merged statement, in order.
    pub rows: Vec<Range<usize>>,
    /// The line each statement starts on.
    pub lines: Vec<usize>,
}

impl Step<'_> {
    /// The bytes sent (for a `USE` or `ALTER DATABASE`, nothing: the loader builds them).
    #[must_use]
    pub fn sql(&self) -> &[u8] {
        match &self.action {
            Action::Sql(sql) | Action::Object { sql, .. } => sql,
            Action::Use(_) | Action::AlterDatabase(..) => &[],
        }
    }

    /// The `k`-th (0-based) dump statement of this step, as the dump wrote it.
    #[must_use]
    pub fn statement(&self, k: usize) -> Cow<'_, [u8]> {
        let sql = self.sql();
        match &self.merged {
            Some(m) => match m.rows.get(k) {
                Some(r) => {
                    let mut v = Vec::with_capacity(m.head + r.len());
                    v.extend_from_slice(&sql[..m.head]);
                    v.extend_from_slice(&sql[r.clone()]);
                    Cow::Owned(v)
                }
                None => Cow::Borrowed(&[]),
            },
            None if k == 0 => Cow::Borrowed(sql),
            None => Cow::Borrowed(&[]),
        }
    }
}

/// The whole load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<'a> {
    /// Before the swap: tables and rows, into the staging databases.
    pub tables: Vec<Step<'a>>,
    /// After the swap: views, triggers, routines, events (and the system schemas'
    /// statements when replayed), into the live databases.
    pub objects: Vec<Step<'a>>,
    /// The databases the dump names, in order; one unnamed entry when it names none.
    pub databases: Vec<Database>,
    /// How many statements the dump holds.
    pub statements: usize,
}

impl Plan<'_> {
    /// How many object statements (creates, alters, drops) the plan holds.
    #[must_use]
    pub fn object_count(&self) -> usize {
        self.objects
            .iter()
            .filter(|s| matches!(s.action, Action::Object { .. }))
            .count()
    }
}

/// dbhelper's marker table, in each seeded database.
pub const MARKER_TABLE: &str = "_dbhelper_seed";

/// The schemas of the server itself.
pub const SYSTEM_SCHEMAS: [&str; 4] = ["mysql", "sys", "performance_schema", "information_schema"];

/// Why a dump cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The dump writes into a system schema.
    #[error(
        "it writes the system schema {name:?} (line {line}); dbhelper never swaps it: --replay-system-schemas runs those statements as the mysql client would, after the swap"
    )]
    SystemSchema {
        /// The schema.
        name: String,
        /// Where the dump names it.
        line: usize,
    },
    /// The dump changes the server's accounts.
    #[error(
        "it changes the server's accounts ({words} on line {line}, as mariadb-dump --system=users writes); dbhelper never does: --replay-system-schemas runs those statements as the mysql client would, after the swap"
    )]
    Accounts {
        /// The statement's first words (`CREATE USER`, `GRANT`, …).
        words: String,
        /// Its line.
        line: usize,
    },
    /// A database name dbhelper cannot stage.
    #[error("it names the database {name:?} (line {line}), {reason}")]
    BadDatabaseName {
        /// The name, as far as readable.
        name: String,
        /// Where.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Longest database name of a dump dbhelper stages (its staging name adds 15 bytes to a
/// server limit of 64).
pub const MAX_DATABASE_NAME: usize = 48;

/// Builds the plan; merged inserts stay at or under `max_statement` bytes (a single
/// statement that is larger on its own is sent as it is). With `replay_system`, the
/// statements of a system schema are replayed after the swap instead of refused.
///
/// # Errors
/// [`PlanError`] for a system schema (without `replay_system`) or an unusable name.
pub fn plan<'a>(
    input: &'a [u8],
    pieces: &[Piece],
    max_statement: usize,
    replay_system: bool,
) -> Result<Plan<'a>, PlanError> {
    let mut p = Planner::new(max_statement, replay_system);
    for piece in pieces {
        let PieceKind::Statement { number, .. } = piece.kind else {
            continue;
        };
        p.statement(&input[piece.range.clone()], number, piece.line, piece.range.end)?;
    }
    Ok(p.finish())
}

/// Builds a plan one statement at a time, for a dump read as a stream: the steps it
/// returns own their bytes. [`Planner::take_tables`] hands over the table steps that are
/// complete (a merge in progress stays until a statement that does not join it).
#[derive(Debug)]
pub struct Planner {
    max_statement: usize,
    replay_system: bool,
    plan: Plan<'static>,
    pending: Option<Merge>,
    /// The database the dump is in (index), once a `USE` said so.
    current: Option<usize>,
    /// Statements on a marker table of the dump, left out.
    markers: usize,
}

impl Planner {
    /// A planner merging inserts up to `max_statement` bytes (0 merges nothing).
    #[must_use]
    pub fn new(max_statement: usize, replay_system: bool) -> Self {
        Planner {
            max_statement,
            replay_system,
            plan: Plan {
                tables: Vec::new(),
                objects: Vec::new(),
                databases: Vec::new(),
                statements: 0,
            },
            pending: None,
            current: None,
            markers: 0,
        }
    }

    /// How many statements on dbhelper's marker table ([`MARKER_TABLE`]) it left out so
    /// far: a dump of a database dbhelper seeded holds the marker of that load.
    #[must_use]
    pub fn marker_statements(&self) -> usize {
        self.markers
    }

    /// The table steps complete so far, in order.
    pub fn take_tables(&mut self) -> std::vec::Drain<'_, Step<'static>> {
        self.plan.tables.drain(..)
    }

    /// The plan of what is left: the table steps not taken, the object steps, the
    /// databases and the statement count.
    #[must_use]
    pub fn finish(mut self) -> Plan<'static> {
        self.flush();
        if self.plan.databases.is_empty() {
            self.plan.databases.push(Database {
                name: None,
                options: None,
                system: false,
                line: 1,
            });
        }
        self.plan
    }

    fn flush(&mut self) {
        if let Some(m) = self.pending.take() {
            self.plan.tables.push(m.into_step());
        }
    }
    /// The index of database `name`, added when new.
    fn database(&mut self, name: &[u8], line: usize) -> Result<usize, PlanError> {
        let text = String::from_utf8(name.to_vec()).map_err(|_| PlanError::BadDatabaseName {
            name: lossy(name),
            line,
            reason: "which is not UTF-8",
        })?;
        if let Some(i) = self
            .plan
            .databases
            .iter()
            .position(|d| d.name.as_deref() == Some(&text))
        {
            return Ok(i);
        }
        let system = SYSTEM_SCHEMAS.iter().any(|s| s.eq_ignore_ascii_case(&text));
        if system && !self.replay_system {
            return Err(PlanError::SystemSchema { name: text, line });
        }
        if !system && (text.is_empty() || text.len() > MAX_DATABASE_NAME) {
            return Err(PlanError::BadDatabaseName {
                name: text,
                line,
                reason: "which is empty or longer than 48 bytes",
            });
        }
        self.plan.databases.push(Database {
            name: Some(text),
            options: None,
            system,
            line,
        });
        Ok(self.plan.databases.len() - 1)
    }

    fn in_system(&self) -> bool {
        self.current.is_some_and(|i| self.plan.databases[i].system)
    }

    /// Counts statement `number` without planning it, for a reader that leaves a table's
    /// statements to another connection's reader: only what that statement does to the
    /// steps of other tables is done (it ends an insert merge in progress), so those
    /// steps come out as [`Planner::statement`] would make them. False (and nothing done)
    /// in a system schema, whose statements are not table steps.
    pub fn skip(&mut self, number: usize) -> bool {
        if self.in_system() {
            return false;
        }
        self.plan.statements = number;
        self.flush();
        true
    }

    /// Plans statement `number` (its `bytes`, starting at `line`, ending at byte `done`
    /// of the dump).
    ///
    /// # Errors
    /// [`PlanError`] for a system schema (without `replay_system`) or an unusable name.
    pub fn statement(&mut self, bytes: &[u8], number: usize, line: usize, done: usize) -> Result<(), PlanError> {
        self.plan.statements = number;
        if !self.in_system() && on_marker(bytes) {
            // The marker of the load on the server the dump was taken from: its table would
            // collide with the one this load writes (and say that load's dump and time).
            self.flush();
            self.markers += 1;
            return Ok(());
        }
        let one = |action| Step {
            action,
            statements: number..=number,
            line,
            done_bytes: done,
            merged: None,
        };
        let owned = || Cow::Owned(bytes.to_vec());
        let kind = classify(bytes);
        if let Kind::Insert { head, rows } = kind
            && !self.in_system()
        {
            let limit = self.max_statement;
            let fits = |m: &&mut Merge| m.head() == head && m.len() + 1 + rows.len() <= limit;
            if let Some(m) = self.pending.as_mut().filter(fits) {
                m.push(rows, number, line, done);
                return Ok(());
            }
            self.flush();
            self.pending = Some(Merge::new(head, rows, number, line, done));
            return Ok(());
        }
        self.flush();
        match kind {
            Kind::Use { name } => {
                let i = self.database(&name, line)?;
                self.current = Some(i);
                if !self.plan.databases[i].system {
                    self.plan.tables.push(one(Action::Use(i)));
                }
                self.plan.objects.push(one(Action::Use(i)));
            }
            Kind::CreateDatabase { name, options } => {
                let i = self.database(&name, line)?;
                let db = &mut self.plan.databases[i];
                if db.options.is_none() && !db.system {
                    db.options = options.map(Cow::into_owned);
                }
            }
            Kind::AlterDatabase { name, options } => {
                let i = self.database(&name, line)?;
                self.plan
                    .objects
                    .push(one(Action::AlterDatabase(i, Cow::Owned(options.into_owned()))));
            }
            Kind::DropDatabase { name } => {
                // The swap replaces the tables; the name still counts as one of the dump's.
                self.database(&name, line)?;
            }
            Kind::Account(words) => {
                if !self.replay_system {
                    return Err(PlanError::Accounts { words, line });
                }
                self.plan.objects.push(one(Action::Sql(owned())));
            }
            Kind::Set => {
                if !self.in_system() {
                    self.plan.tables.push(one(Action::Sql(owned())));
                }
                self.plan.objects.push(one(Action::Sql(owned())));
            }
            Kind::Object {
                verb,
                kind,
                name,
                definer,
            } => self.plan.objects.push(one(Action::Object {
                verb,
                kind,
                name,
                definer,
                sql: owned(),
            })),
            Kind::Insert { .. } | Kind::Other if self.in_system() => {
                self.plan.objects.push(one(Action::Sql(owned())));
            }
            Kind::Insert { .. } | Kind::Other => self.plan.tables.push(one(Action::Sql(owned()))),
        }
        Ok(())
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Consecutive inserts with the same head being merged, in a buffer of their own (the
/// dump's bytes are gone once the next window is read).
#[derive(Debug)]
struct Merge {
    /// The head, then each statement's rows, joined with `,`.
    sql: Vec<u8>,
    head: usize,
    rows: Vec<Range<usize>>,
    lines: Vec<usize>,
    first: usize,
    last: usize,
    line: usize,
    done: usize,
}

impl Merge {
    fn new(head: &[u8], rows: &[u8], number: usize, line: usize, done: usize) -> Self {
        let mut sql = Vec::with_capacity(head.len() + rows.len());
        sql.extend_from_slice(head);
        sql.extend_from_slice(rows);
        Merge {
            sql,
            head: head.len(),
            rows: std::iter::once(head.len()..head.len() + rows.len()).collect(),
            lines: vec![line],
            first: number,
            last: number,
            line,
            done,
        }
    }

    fn head(&self) -> &[u8] {
        &self.sql[..self.head]
    }

    fn len(&self) -> usize {
        self.sql.len()
    }

    fn push(&mut self, rows: &[u8], number: usize, line: usize, done: usize) {
        self.lines.push(line);
        self.sql.push(b',');
        let start = self.sql.len();
        self.sql.extend_from_slice(rows);
        self.rows.push(start..self.sql.len());
        self.last = number;
        self.done = done;
    }

    fn into_step(self) -> Step<'static> {
        Step {
            merged: (self.rows.len() > 1).then_some(Merged {
                head: self.head,
                rows: self.rows,
                lines: self.lines,
            }),
            action: Action::Sql(Cow::Owned(self.sql)),
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
    /// A string literal, unquoted (a name in `DEFINER='u'@'h'` or under `ANSI_QUOTES`).
    Str(Vec<u8>),
    /// Any other single byte.
    Punct(u8),
}

/// Reads tokens with the rules of [`crate::lex`], treating comments as space and the
/// markers of version comments as transparent (their contents are code).
#[derive(Clone)]
struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
    in_code_comment: bool,
    /// Where the last token read starts.
    start: usize,
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
            start: 0,
        }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.s.get(i).copied()
    }

    /// Skips whitespace, comments and version-comment markers.
    fn skip_space(&mut self) {
        loop {
            let Some(b) = self.at(self.pos) else { return };
            if lex::is_space(b) {
                self.pos += 1;
            } else if lex::line_comment_at(self.s, self.pos) {
                self.pos = lex::end_of_line(self.s, self.pos);
            } else if b == b'*' && self.at(self.pos + 1) == Some(b'/') && self.in_code_comment {
                self.in_code_comment = false;
                self.pos += 2;
            } else if let Some((block, len)) = lex::block_at(self.s, self.pos) {
                match block {
                    Block::Version | Block::Hint if !self.in_code_comment => {
                        self.in_code_comment = true;
                        self.pos += len;
                        while self.at(self.pos).is_some_and(|c| c.is_ascii_digit()) {
                            self.pos += 1;
                        }
                    }
                    _ => self.pos = lex::block_end(self.s, self.pos).unwrap_or(self.s.len()),
                }
            } else {
                return;
            }
        }
    }

    fn next(&mut self) -> Option<Token> {
        self.skip_space();
        let b = self.at(self.pos)?;
        self.start = self.pos;
        match b {
            b'`' | b'\'' | b'"' => {
                let end = lex::quoted_end(self.s, self.pos).unwrap_or(self.s.len());
                let inner = lex::unquote(self.s, self.pos, end);
                self.pos = end;
                Some(if b == b'`' {
                    Token::Quoted(inner)
                } else {
                    Token::Str(inner)
                })
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

    /// The next token without moving.
    fn peek(&mut self) -> Option<Token> {
        let (pos, inside, start) = (self.pos, self.in_code_comment, self.start);
        let t = self.next();
        (self.pos, self.in_code_comment, self.start) = (pos, inside, start);
        t
    }

    /// The next token if it is the keyword `kw` (case-insensitive); otherwise nothing moves.
    fn keyword(&mut self, kw: &str) -> bool {
        match self.peek() {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw.as_bytes()) => {
                self.next();
                true
            }
            _ => false,
        }
    }

    /// The next token if it is the punctuation `p`.
    fn punct(&mut self, p: u8) -> bool {
        if self.peek() == Some(Token::Punct(p)) {
            self.next();
            return true;
        }
        false
    }

    /// The next token as a name (unquoted word or backtick identifier).
    fn name(&mut self) -> Option<Vec<u8>> {
        match self.next()? {
            Token::Word(w) | Token::Quoted(w) => Some(w),
            _ => None,
        }
    }

    /// The next token as an object name: also a `"…"` one (`ANSI_QUOTES`), and the last
    /// part of `db.name`.
    fn object_name(&mut self) -> Option<Vec<u8>> {
        let mut name = match self.next()? {
            Token::Word(w) | Token::Quoted(w) | Token::Str(w) => w,
            Token::Punct(_) => return None,
        };
        while self.punct(b'.') {
            name = match self.next()? {
                Token::Word(w) | Token::Quoted(w) | Token::Str(w) => w,
                Token::Punct(_) => return None,
            };
        }
        Some(name)
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

    /// After `DEFINER`: `= user@host`, `= CURRENT_USER[()]` or `= role`.
    fn definer(&mut self) -> Option<Definer> {
        if !self.punct(b'=') {
            return None;
        }
        let user = match self.next()? {
            Token::Word(w) if w.eq_ignore_ascii_case(b"current_user") => {
                if self.punct(b'(') {
                    self.punct(b')');
                }
                return None;
            }
            Token::Word(w) | Token::Quoted(w) | Token::Str(w) => w,
            Token::Punct(_) => return None,
        };
        let from = self.start;
        // `user@host` may lex as one word when unquoted (`root@localhost` has no `@`
        // word byte, so it does not): read `@` then the host.
        if !self.punct(b'@') {
            return None;
        }
        let host = match self.next()? {
            Token::Word(w) | Token::Quoted(w) | Token::Str(w) => w,
            Token::Punct(_) => return None,
        };
        Some(Definer {
            user,
            host,
            span: from..self.pos,
        })
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
    if let Some(words) = account_statement(&first, lx.clone()) {
        return Kind::Account(words);
    }
    if is("set") {
        return Kind::Set;
    }
    if is("insert") || is("replace") {
        return insert(stmt, lx);
    }
    let verb = if is("create") {
        Verb::Create
    } else if is("alter") {
        Verb::Alter
    } else if is("drop") {
        Verb::Drop
    } else {
        return Kind::Other;
    };
    if lx.keyword("database") || lx.keyword("schema") {
        return database_statement(stmt, verb, lx);
    }
    object_statement(verb, lx)
}

/// The first words of a statement on accounts (after `first`, its first word): `GRANT`,
/// `REVOKE`, `CREATE|ALTER|DROP|RENAME [OR REPLACE] USER|ROLE`, `SET ROLE`, `SET DEFAULT
/// ROLE`, `SET PASSWORD`.
fn account_statement(first: &[u8], mut lx: Lexer<'_>) -> Option<String> {
    let first = first.to_ascii_uppercase();
    match first.as_slice() {
        b"GRANT" | b"REVOKE" => return Some(lossy(&first)),
        b"SET" => {
            if lx.keyword("default") {
                return lx.keyword("role").then(|| "SET DEFAULT ROLE".to_owned());
            }
            return ["role", "password"]
                .into_iter()
                .find(|what| lx.keyword(what))
                .map(|what| format!("SET {}", what.to_ascii_uppercase()));
        }
        b"CREATE" | b"ALTER" | b"DROP" | b"RENAME" => {}
        _ => return None,
    }
    let _ = lx.keyword("or") && lx.keyword("replace");
    ["user", "role"]
        .into_iter()
        .find(|what| lx.keyword(what))
        .map(|what| format!("{} {}", lossy(&first), what.to_ascii_uppercase()))
}

/// The account `CREATE [OR REPLACE] USER [IF NOT EXISTS] user@host …` creates (its host in
/// lower case; `user` alone is `user@%`), for the definers of a dump that creates them.
#[must_use]
pub fn created_account(stmt: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut lx = Lexer::new(stmt);
    if !lx.keyword("create") {
        return None;
    }
    let _ = lx.keyword("or") && lx.keyword("replace");
    if !lx.keyword("user") {
        return None;
    }
    if lx.keyword("if") {
        lx.keyword("not");
        lx.keyword("exists");
    }
    let user = match lx.next()? {
        Token::Word(w) | Token::Quoted(w) | Token::Str(w) => w,
        Token::Punct(_) => return None,
    };
    if !lx.punct(b'@') {
        return Some((user, b"%".to_vec()));
    }
    match lx.next()? {
        Token::Word(h) | Token::Quoted(h) | Token::Str(h) => Some((user, h.to_ascii_lowercase())),
        Token::Punct(_) => None,
    }
}

/// `CREATE|ALTER|DROP DATABASE …`, after its second word.
fn database_statement<'a>(stmt: &'a [u8], verb: Verb, mut lx: Lexer<'a>) -> Kind<'a> {
    match verb {
        Verb::Create => {
            let _ = lx.keyword("if") && lx.keyword("not") && lx.keyword("exists");
        }
        Verb::Drop => {
            let _ = lx.keyword("if") && lx.keyword("exists");
        }
        Verb::Alter => {}
    }
    let Some(name) = lx.name() else {
        return Kind::Other;
    };
    if verb == Verb::Drop {
        return Kind::DropDatabase { name };
    }
    let (rest_at, inside) = (lx.pos, lx.in_code_comment);
    let has_options = lx.has_word();
    let rest = &stmt[rest_at..];
    let options = if inside {
        // The name sat inside a version comment that the options close: reopen it.
        let mut v = b"/*!".to_vec();
        v.extend_from_slice(rest);
        Cow::Owned(v)
    } else {
        Cow::Borrowed(rest)
    };
    match verb {
        Verb::Create => Kind::CreateDatabase {
            name,
            options: has_options.then_some(options),
        },
        _ if has_options => Kind::AlterDatabase { name, options },
        _ => Kind::Other,
    }
}

/// `CREATE|ALTER|DROP [OR REPLACE] [ALGORITHM=…] [DEFINER=…] [SQL SECURITY …]
/// VIEW|TRIGGER|PROCEDURE|FUNCTION|EVENT [IF [NOT] EXISTS] name`, after its first word.
fn object_statement<'a>(verb: Verb, mut lx: Lexer<'a>) -> Kind<'a> {
    let mut definer = None;
    let kind = loop {
        let Some(Token::Word(w)) = lx.next() else {
            return Kind::Other;
        };
        let w = w.to_ascii_lowercase();
        match w.as_slice() {
            b"view" => break ObjectKind::View,
            b"trigger" => break ObjectKind::Trigger,
            b"procedure" => break ObjectKind::Procedure,
            b"function" => break ObjectKind::Function,
            b"event" => break ObjectKind::Event,
            // `SQL SECURITY DEFINER` has no `=`: it keeps the definer read before.
            b"definer" => {
                if let Some(d) = lx.definer() {
                    definer = Some(d);
                }
            }
            b"algorithm" => {
                lx.punct(b'=');
                lx.next();
            }
            // `OR REPLACE`, `SQL SECURITY DEFINER|INVOKER`, `AGGREGATE`, `NONEDITIONABLE`…
            b"or" | b"replace" | b"sql" | b"security" | b"invoker" | b"aggregate" | b"nonvalidating" => {}
            _ => return Kind::Other,
        }
    };
    if lx.keyword("if") {
        lx.keyword("not");
        lx.keyword("exists");
    }
    Kind::Object {
        verb,
        kind,
        name: lx.object_name(),
        definer,
    }
}

/// Which table a statement of the tables phase works on, for loading tables in parallel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Session state (`SET`, `USE`, `ALTER DATABASE`): every connection runs it.
    Session,
    /// One table, unqualified (`CREATE|DROP|ALTER … t`, `INSERT INTO t`).
    Table(Vec<u8>),
    /// `LOCK TABLES …` or `UNLOCK TABLES`: left out of a parallel load (see [`lanes`]).
    Lock,
    /// Anything else (or a qualified or multi-table name): loads stay sequential.
    Unknown,
}

/// See [`Target`].
#[must_use]
pub fn target_of(action: &Action<'_>) -> Target {
    let sql = match action {
        Action::Use(_) | Action::AlterDatabase(..) => return Target::Session,
        Action::Sql(sql) | Action::Object { sql, .. } => sql,
    };
    let mut lx = Lexer::new(sql);
    let Some(Token::Word(first)) = lx.next() else {
        return Target::Unknown;
    };
    let first = first.to_ascii_lowercase();
    let named = match first.as_slice() {
        b"set" => return Target::Session,
        b"unlock" | b"lock" => {
            return if lx.keyword("tables") || lx.keyword("table") {
                Target::Lock
            } else {
                Target::Unknown
            };
        }
        b"create" | b"drop" | b"alter" => {
            // Not `SEQUENCE`: a table whose `DEFAULT nextval(s)` names a sequence would go
            // to a lane of its own and could be created before the sequence exists. A dump
            // with sequences loads on one connection, in dump order.
            if !lx.keyword("table") {
                return Target::Unknown;
            }
            if lx.keyword("if") {
                lx.keyword("not");
                lx.keyword("exists");
            }
            lx.name()
        }
        b"insert" | b"replace" => loop {
            match lx.next() {
                Some(Token::Word(w))
                    if [&b"into"[..], b"ignore", b"low_priority", b"delayed", b"high_priority"]
                        .iter()
                        .any(|k| w.eq_ignore_ascii_case(k)) => {}
                Some(Token::Word(w) | Token::Quoted(w)) => break Some(w),
                _ => break None,
            }
        },
        _ => return Target::Unknown,
    };
    match (named, lx.peek()) {
        // `db.t` or `t1, t2`: not one table of the current database.
        (Some(_), Some(Token::Punct(b'.' | b','))) | (None, _) => Target::Unknown,
        (Some(name), _) => Target::Table(name),
    }
}

/// Whether `stmt` creates, drops, alters, fills or locks (alone) dbhelper's marker table.
fn on_marker(stmt: &[u8]) -> bool {
    let marker = MARKER_TABLE.as_bytes();
    if target_of(&Action::Sql(Cow::Borrowed(stmt))) == Target::Table(marker.to_vec()) {
        return true;
    }
    // mysqldump's `LOCK TABLES `_dbhelper_seed` WRITE` (its UNLOCK TABLES is harmless).
    let mut lx = Lexer::new(stmt);
    let locks = matches!(lx.next(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(b"lock"))
        && (lx.keyword("tables") || lx.keyword("table"))
        && lx.name().as_deref() == Some(marker);
    locks && {
        while ["read", "local", "write", "low_priority"].iter().any(|k| lx.keyword(k)) {}
        lx.next().is_none()
    }
}

/// Spreads the tables phase over at most `lanes` connections: each table's statements go
/// to one lane (tables dealt by their size, see [`deal_by_size`]), session statements to
/// every lane, in dump order. `None` when a statement belongs to no single table: then the
/// load stays on one connection, in dump order.
///
/// `LOCK TABLES` and `UNLOCK TABLES` are left out. A lane holding `LOCK TABLES parent
/// WRITE` while another lane creates a table with a foreign key to `parent` gets
/// "Table 'child' was not locked with LOCK TABLES" at its next insert (checked on MariaDB
/// 10.11: the server adds the new child table to what an insert into the parent must have
/// locked, and the child was not there when the lock was taken). The client never meets
/// this, as it creates the child only after the parent's `UNLOCK`. The locks only keep
/// other sessions out, and nobody else uses the staging databases.
#[must_use]
pub fn lanes<'p, 'a>(steps: &'p [Step<'a>], lanes: usize) -> Option<Vec<Vec<&'p Step<'a>>>> {
    let mut sizes = Router::new(1);
    for step in steps {
        sizes.route(step)?;
    }
    let mut router = Router::by_size(lanes, sizes.sizes());
    let mut out: Vec<Vec<&Step<'a>>> = vec![Vec::new(); router.lanes];
    for step in steps {
        match router.route(step)? {
            Route::Every => out.iter_mut().for_each(|lane| lane.push(step)),
            Route::Lane(i) => out[i].push(step),
            Route::Skip => {}
        }
    }
    // Fewer tables than lanes: the lanes past them would only replay session statements.
    out.truncate(router.tables().clamp(1, router.lanes));
    Some(out)
}

/// Where [`Router::route`] sends a step of the tables phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Session state: every connection.
    Every,
    /// The connection of the step's table.
    Lane(usize),
    /// Not sent (`LOCK`/`UNLOCK TABLES`, see [`lanes`]).
    Skip,
}

/// [`lanes`] one step at a time, for a dump read as a stream.
///
/// Every reader of the dump builds its own router from the same sizes and sees the tables
/// in the same order, so each table goes to the same one lane in all of them.
#[derive(Debug)]
pub struct Router {
    lanes: usize,
    /// Each table (the database index, then its name) and its number, in order of first
    /// appearance.
    table_of: std::collections::HashMap<(usize, Vec<u8>), usize>,
    /// The lane of each table by number, when dealt by size; past its end (or without it),
    /// the tables take the lanes in turn.
    deal: Vec<usize>,
    /// The bytes of each table's statements so far, by number.
    sizes: Vec<usize>,
    database: usize,
}

impl Router {
    /// Deals tables over `lanes` connections (at least one) in turn, as they first appear.
    #[must_use]
    pub fn new(lanes: usize) -> Self {
        Router::by_size(lanes, &[])
    }

    /// Deals tables over `lanes` connections by the sizes an earlier pass found (the
    /// [`Router::sizes`] of a router that saw the same steps): largest first, each to the
    /// least loaded lane, so that a big table and its empty log table do not leave lanes
    /// idle as dealing in turn would.
    #[must_use]
    pub fn by_size(lanes: usize, sizes: &[usize]) -> Self {
        let lanes = lanes.max(1);
        Router {
            lanes,
            table_of: std::collections::HashMap::new(),
            deal: deal_by_size(sizes, lanes),
            sizes: Vec::new(),
            database: 0,
        }
    }

    /// Where `step` goes; `None` when it belongs to no single table (the load must stay
    /// on one connection, in dump order).
    pub fn route(&mut self, step: &Step<'_>) -> Option<Route> {
        if let Action::Use(i) = step.action {
            self.database = i;
        }
        Some(match target_of(&step.action) {
            Target::Session => Route::Every,
            Target::Lock => Route::Skip,
            Target::Unknown => return None,
            Target::Table(name) => {
                let sizes = &mut self.sizes;
                let number = *self.table_of.entry((self.database, name)).or_insert_with(|| {
                    sizes.push(0);
                    sizes.len() - 1
                });
                if let Some(size) = self.sizes.get_mut(number) {
                    *size = size.saturating_add(step.action.sql_len());
                }
                Route::Lane(self.deal.get(number).copied().unwrap_or(number % self.lanes))
            }
        })
    }

    /// The lane of a statement's table when it is one the router has already dealt (read
    /// from the statement's first words only), its bytes counted to that table's size: a
    /// reader can leave it unplanned, to that lane's reader, or (the first pass) only
    /// count it.
    pub fn dealt_lane(&mut self, statement: &[u8]) -> Option<usize> {
        let Target::Table(name) = target_of(&Action::Sql(Cow::Borrowed(statement))) else {
            return None;
        };
        let number = *self.table_of.get(&(self.database, name))?;
        if let Some(size) = self.sizes.get_mut(number) {
            *size = size.saturating_add(statement.len());
        }
        Some(self.deal.get(number).copied().unwrap_or(number % self.lanes))
    }

    /// How many tables it has seen.
    #[must_use]
    pub fn tables(&self) -> usize {
        self.sizes.len()
    }

    /// The bytes of each table's statements, in order of first appearance.
    #[must_use]
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }
}

/// Deals tables of the given sizes over `lanes` connections: largest first, each to the
/// least loaded lane so far (ties to the lowest), the best a loader can do without splitting a
/// table. An empty table still counts for one byte, so empty tables spread too.
#[must_use]
pub fn deal_by_size(sizes: &[usize], lanes: usize) -> Vec<usize> {
    let lanes = lanes.max(1);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    // Stable: equal sizes keep their dump order.
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let mut load = vec![0usize; lanes];
    let mut lane_of = vec![0; sizes.len()];
    for i in order {
        let lane = (0..lanes).min_by_key(|&l| (load[l], l)).unwrap_or(0);
        load[lane] = load[lane].saturating_add(sizes[i].saturating_add(1));
        lane_of[i] = lane;
    }
    lane_of
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
                i = lex::quoted_end(s, i)?;
                continue;
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
            ("/*!40101 SET NAMES latin1 */", Kind::Set),
            ("set @a = 1", Kind::Set),
            ("LOCK TABLES `t` WRITE", Kind::Other),
            ("CREATE TABLE `view` (a int)", Kind::Other),
            ("CREATE USER x", Kind::Account("CREATE USER".into())),
            ("create or replace user x", Kind::Account("CREATE USER".into())),
            ("DROP ROLE r", Kind::Account("DROP ROLE".into())),
            ("RENAME USER a TO b", Kind::Account("RENAME USER".into())),
            (
                "/*!80001 ALTER USER 'r'@'h' DEFAULT ROLE NONE */",
                Kind::Account("ALTER USER".into()),
            ),
            ("grant r to current_user()", Kind::Account("GRANT".into())),
            ("REVOKE ALL ON *.* FROM x", Kind::Account("REVOKE".into())),
            ("SET ROLE NONE", Kind::Account("SET ROLE".into())),
            ("SET DEFAULT ROLE NONE FOR x", Kind::Account("SET DEFAULT ROLE".into())),
            (
                "SET PASSWORD FOR x = PASSWORD('p')",
                Kind::Account("SET PASSWORD".into()),
            ),
            // A variable named like them is a session setting.
            ("SET @role = 1", Kind::Set),
            ("SET default_storage_engine = InnoDB", Kind::Set),
            ("CREATE TABLE user (a int)", Kind::Other),
            ("DROP TABLE IF EXISTS `v`", Kind::Other),
            (
                "/*!50001 DROP VIEW IF EXISTS `v``w`*/",
                Kind::Object {
                    verb: Verb::Drop,
                    kind: ObjectKind::View,
                    name: Some(name("v`w")),
                    definer: None,
                },
            ),
            (
                "CREATE OR REPLACE DEFINER=CURRENT_USER() AGGREGATE FUNCTION IF NOT EXISTS db.f() RETURNS INT RETURN 1",
                Kind::Object {
                    verb: Verb::Create,
                    kind: ObjectKind::Function,
                    name: Some(name("f")),
                    definer: None,
                },
            ),
            (
                "CREATE DEFINER='u''x'@'h' EVENT e ON SCHEDULE EVERY 1 DAY DO SELECT 1",
                Kind::Object {
                    verb: Verb::Create,
                    kind: ObjectKind::Event,
                    name: Some(name("e")),
                    definer: Some(Definer {
                        user: name("u'x"),
                        host: name("h"),
                        span: 15..25,
                    }),
                },
            ),
            (
                "ALTER DEFINER=`a`@`b` SQL SECURITY INVOKER VIEW `v` AS SELECT 1",
                Kind::Object {
                    verb: Verb::Alter,
                    kind: ObjectKind::View,
                    name: Some(name("v")),
                    definer: Some(Definer {
                        user: name("a"),
                        host: name("b"),
                        span: 14..21,
                    }),
                },
            ),
            (
                "drop procedure if exists `p`",
                Kind::Object {
                    verb: Verb::Drop,
                    kind: ObjectKind::Procedure,
                    name: Some(name("p")),
                    definer: None,
                },
            ),
            (
                "/*!50003 ALTER DATABASE `w` CHARACTER SET latin1 COLLATE latin1_swedish_ci */",
                Kind::AlterDatabase {
                    name: name("w"),
                    options: Cow::Owned(b"/*! CHARACTER SET latin1 COLLATE latin1_swedish_ci */".to_vec()),
                },
            ),
            ("", Kind::Other),
            ("(", Kind::Other),
        ];
        for (input, want) in cases {
            assert_eq!(&classify(input.as_bytes()), want, "input {input:?}");
        }
    }

    #[test]
    fn targets_table() {
        let t = |n: &str| Target::Table(n.as_bytes().to_vec());
        let cases: &[(&str, Target)] = &[
            ("/*!40101 SET NAMES utf8mb4 */", Target::Session),
            ("DROP TABLE IF EXISTS `a``b`", t("a`b")),
            ("CREATE TABLE `c` (x int)", t("c")),
            ("CREATE TABLE IF NOT EXISTS c (x int)", t("c")),
            ("/*!40000 ALTER TABLE `c` DISABLE KEYS */", t("c")),
            ("LOCK TABLES `c` WRITE", Target::Lock),
            ("/*!40000 LOCK TABLES `c` READ LOCAL */", Target::Lock),
            ("UNLOCK TABLES", Target::Lock),
            ("lock table a write, b write", Target::Lock),
            ("LOCK INSTANCE FOR BACKUP", Target::Unknown),
            ("INSERT INTO `c` VALUES (1)", t("c")),
            ("INSERT IGNORE INTO c VALUES (1)", t("c")),
            ("REPLACE c VALUES (1)", t("c")),
            ("INSERT INTO other.c VALUES (1)", Target::Unknown),
            ("DROP TABLE a, b", Target::Unknown),
            ("UPDATE c SET x = 1", Target::Unknown),
            ("CREATE INDEX i ON c (x)", Target::Unknown),
            // Sequences, as mariadb-dump writes them: a table's default may use one, so
            // they keep the load on one connection, in dump order.
            ("DROP SEQUENCE IF EXISTS `s`", Target::Unknown),
            ("CREATE SEQUENCE `s` start with 100 increment by 5", Target::Unknown),
            ("DO SETVAL(`s`, 5100, 0)", Target::Unknown),
            ("", Target::Unknown),
        ];
        for (sql, want) in cases {
            assert_eq!(&target_of(&Action::Sql(Cow::Borrowed(sql.as_bytes()))), want, "{sql}");
        }
        assert_eq!(target_of(&Action::Use(1)), Target::Session);
    }

    #[test]
    fn lanes_keep_each_table_on_one_connection_and_session_statements_on_all() {
        let input = "SET NAMES utf8mb4;\nDROP TABLE IF EXISTS a;\nCREATE TABLE a (x int);\nLOCK TABLES a WRITE;\n\
                     INSERT INTO a VALUES (1);\nUNLOCK TABLES;\nCREATE TABLE b (x int);\nLOCK TABLES b WRITE;\n\
                     INSERT INTO b VALUES (2);\nUNLOCK TABLES;\nCREATE TABLE c (x int);\nUSE other\n\
                     CREATE TABLE a (y int);\nSET @x = 1;\n";
        let pieces = split(input.as_bytes()).unwrap();
        let p = plan(input.as_bytes(), &pieces, 1 << 20, false).unwrap();
        let lanes = lanes(&p.tables, 2).unwrap();
        let numbers: Vec<Vec<usize>> = lanes
            .iter()
            .map(|lane| lane.iter().map(|st| *st.statements.start()).collect())
            .collect();
        // `other` is the dump's first named database: the statements before its `USE` went
        // to it too (the connection starts there), so its `a` is the first `a`. The
        // `LOCK`/`UNLOCK TABLES` (4, 6, 8, 10) are left out.
        // By size: `a` (2, 3, 5) is the largest and goes first, to lane 0; `b` (7, 9) to
        // lane 1; `c` (11) to the lighter lane 1; `other`.`a` (13) to lane 0.
        assert_eq!(numbers, [vec![1, 2, 3, 5, 12, 13, 14], vec![1, 7, 9, 11, 12, 14]]);
        // One lane: everything else in dump order.
        let one = super::lanes(&p.tables, 1).unwrap();
        assert_eq!(one[0].len(), p.tables.len() - 4);
        // A statement of no single table keeps the load sequential.
        let input = "CREATE TABLE a (x int);\nUPDATE a SET x = 1;\n";
        let pieces = split(input.as_bytes()).unwrap();
        let p = plan(input.as_bytes(), &pieces, 1 << 20, false).unwrap();
        assert!(super::lanes(&p.tables, 4).is_none());
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

    fn describe(steps: Vec<Step<'_>>) -> Vec<(String, RangeInclusive<usize>)> {
        steps
            .into_iter()
            .map(|st| {
                let text = match st.action {
                    Action::Use(i) => format!("<use {i}>"),
                    Action::AlterDatabase(i, o) => format!("<alter {i}>{}", s(&o)),
                    Action::Sql(b) => s(&b),
                    Action::Object { verb, kind, name, .. } => {
                        format!("<{verb:?} {kind} {}>", s(&name.unwrap_or_default()))
                    }
                };
                (text, st.statements)
            })
            .collect()
    }

    fn steps(input: &str, max: usize) -> Vec<(String, RangeInclusive<usize>)> {
        let pieces = split(input.as_bytes()).unwrap();
        describe(plan(input.as_bytes(), &pieces, max, false).unwrap().tables)
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
                ("<use 0>".to_owned(), 2..=2),
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
    fn database_options_are_kept_for_the_database() {
        let input = "/*!40000 DROP DATABASE IF EXISTS `w`*/;\nCREATE DATABASE /*!32312 IF NOT EXISTS*/ `w` /*!40100 DEFAULT CHARACTER SET latin1 */;\nUSE `w`;\nCREATE TABLE t (a int);";
        let pieces = split(input.as_bytes()).unwrap();
        let p = plan(input.as_bytes(), &pieces, 1 << 20, false).unwrap();
        assert_eq!(
            p.databases,
            [Database {
                name: Some("w".into()),
                options: Some(b" /*!40100 DEFAULT CHARACTER SET latin1 */".to_vec()),
                system: false,
                line: 1
            }]
        );
        assert_eq!(
            describe(p.tables),
            vec![
                ("<use 0>".to_owned(), 3..=3),
                ("CREATE TABLE t (a int)".to_owned(), 4..=4)
            ]
        );
    }

    /// A `--databases` dump: each database its own index, tables before the swap, the
    /// objects after it with the session settings and `USE`s around them, in dump order.
    #[test]
    fn databases_and_objects_are_sorted_into_the_two_phases() {
        let input = "CREATE DATABASE `a` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\nUSE `a`;\n\
                     CREATE TABLE t (x int);\nINSERT INTO t VALUES (1);\n\
                     /*!50003 SET sql_mode = 'ANSI_QUOTES' */ ;\nDELIMITER ;;\n\
                     /*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER trg AFTER INSERT ON t FOR EACH ROW SET @n = 1 */;;\n\
                     DELIMITER ;\nDROP TABLE IF EXISTS `v`;\n/*!50001 DROP VIEW IF EXISTS `v`*/;\n\
                     /*!50001 CREATE VIEW `v` AS SELECT 1 AS `x` */;\n\
                     CREATE DATABASE `b c`;\nUSE `b c`\nCREATE TABLE u (y int);\n\
                     /*!50003 ALTER DATABASE `b c` CHARACTER SET latin1 */ ;\n\
                     CREATE DEFINER=\"gone\"@\"%\" PROCEDURE \"p\"() SELECT 1;\n\
                     /*!50106 DROP EVENT IF EXISTS `e` */;\nUSE `a`;\n\
                     /*!50001 CREATE ALGORITHM=UNDEFINED */ /*!50013 DEFINER=`root`@`%` SQL SECURITY DEFINER */ /*!50001 VIEW `v` AS select 2 AS `x` */;\n";
        let pieces = split(input.as_bytes()).unwrap();
        let p = plan(input.as_bytes(), &pieces, 1 << 20, false).unwrap();
        let names: Vec<Option<&str>> = p.databases.iter().map(|d| d.name.as_deref()).collect();
        assert_eq!(names, [Some("a"), Some("b c")]);
        assert_eq!(
            describe(p.tables.clone()),
            vec![
                ("<use 0>".to_owned(), 2..=2),
                ("CREATE TABLE t (x int)".to_owned(), 3..=3),
                ("INSERT INTO t VALUES (1)".to_owned(), 4..=4),
                ("/*!50003 SET sql_mode = 'ANSI_QUOTES' */".to_owned(), 5..=5),
                ("DROP TABLE IF EXISTS `v`".to_owned(), 7..=7),
                ("<use 1>".to_owned(), 11..=11),
                ("CREATE TABLE u (y int)".to_owned(), 12..=12),
                ("<use 0>".to_owned(), 16..=16),
            ]
        );
        assert_eq!(
            describe(p.objects.clone()),
            vec![
                ("<use 0>".to_owned(), 2..=2),
                ("/*!50003 SET sql_mode = 'ANSI_QUOTES' */".to_owned(), 5..=5),
                ("<Create trigger trg>".to_owned(), 6..=6),
                ("<Drop view v>".to_owned(), 8..=8),
                ("<Create view v>".to_owned(), 9..=9),
                ("<use 1>".to_owned(), 11..=11),
                ("<alter 1>/*! CHARACTER SET latin1 */".to_owned(), 13..=13),
                ("<Create procedure p>".to_owned(), 14..=14),
                ("<Drop event e>".to_owned(), 15..=15),
                ("<use 0>".to_owned(), 16..=16),
                ("<Create view v>".to_owned(), 17..=17),
            ]
        );
        assert_eq!(p.object_count(), 6);
        let definers: Vec<(String, String, String)> = p
            .objects
            .iter()
            .filter_map(|st| match &st.action {
                Action::Object {
                    definer: Some(d), sql, ..
                } => Some((s(&d.user), s(&d.host), s(&sql[d.span.clone()]))),
                _ => None,
            })
            .collect();
        assert_eq!(
            definers,
            [
                ("root".into(), "localhost".into(), "`root`@`localhost`".into()),
                ("gone".into(), "%".into(), "\"gone\"@\"%\"".into()),
                ("root".into(), "%".into(), "`root`@`%`".into()),
            ]
        );
    }

    #[test]
    fn system_schemas_and_unusable_names_are_refused() {
        let cases: &[(&str, &str)] = &[
            ("CREATE DATABASE mysql;\nUSE mysql;", "system schema \"mysql\" (line 1)"),
            (
                "USE a\nCREATE TABLE t (x int);\nUSE `SYS`\n",
                "system schema \"SYS\" (line 3)",
            ),
            ("USE `performance_schema`;", "--replay-system-schemas"),
            ("USE ``;", "which is empty"),
            // Accounts, as `mariadb-dump --system=users` writes them.
            (
                "CREATE TABLE t (x int);\nCREATE USER `app`@`%` IDENTIFIED BY PASSWORD '*D8';",
                "accounts (CREATE USER on line 2, as mariadb-dump --system=users writes)",
            ),
            ("GRANT SELECT ON `a`.* TO `app`@`%`;", "(GRANT on line 1"),
            (
                "/*M!100005 SET DEFAULT ROLE NONE FOR 'r'@'h' */;",
                "(SET DEFAULT ROLE on line 1",
            ),
            ("SET ROLE mariadb_dump_import_role;", "--replay-system-schemas"),
            ("CREATE OR REPLACE ROLE r;", "(CREATE ROLE on line 1"),
        ];
        for (input, needle) in cases {
            let pieces = split(input.as_bytes()).unwrap();
            let err = plan(input.as_bytes(), &pieces, 1 << 20, false).unwrap_err();
            assert!(err.to_string().contains(needle), "{input:?}: {err}");
        }
        // With the option, the system schema's statements go after the swap, verbatim.
        let input = "USE a\nCREATE TABLE t (x int);\nUSE mysql\nINSERT INTO x VALUES (1);\nUSE a\n";
        let pieces = split(input.as_bytes()).unwrap();
        let p = plan(input.as_bytes(), &pieces, 1 << 20, true).unwrap();
        assert!(p.databases[1].system);
        assert_eq!(
            describe(p.tables),
            vec![
                ("<use 0>".to_owned(), 1..=1),
                ("CREATE TABLE t (x int)".to_owned(), 2..=2),
                ("<use 0>".to_owned(), 5..=5)
            ]
        );
        assert_eq!(
            describe(p.objects),
            vec![
                ("<use 0>".to_owned(), 1..=1),
                ("<use 1>".to_owned(), 3..=3),
                ("INSERT INTO x VALUES (1)".to_owned(), 4..=4),
                ("<use 0>".to_owned(), 5..=5)
            ]
        );
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
            let p = plan(input.as_bytes(), &pieces, limit, false).unwrap();
            let mut got: Vec<(char, String)> = Vec::new();
            for step in &p.tables {
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
                    Kind::Set => assert_eq!(s(bytes), "SET @x = 1"),
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
        let p = plan(&input, &pieces, 16 << 20, false).unwrap();
        let names: Vec<Option<&str>> = p.databases.iter().map(|d| d.name.as_deref()).collect();
        assert_eq!(names, [Some("world")]);
        assert!(p.objects.iter().all(|st| !matches!(st.action, Action::Object { .. })));
        let inserts: Vec<RangeInclusive<usize>> = p
            .tables
            .iter()
            .filter(|st| matches!(&st.action, Action::Sql(b) if b.starts_with(b"INSERT")))
            .map(|st| st.statements.clone())
            .collect();
        assert_eq!(inserts.len(), 3, "{inserts:?}");
        assert_eq!(
            inserts.iter().map(|r| r.end() - r.start() + 1).sum::<usize>(),
            4079 + 239 + 984
        );
        // `CREATE DATABASE IF NOT EXISTS `world`` has no options.
        assert_eq!(p.databases[0].options, None);
        assert_eq!(p.tables.iter().filter(|st| st.action == Action::Use(0)).count(), 1);
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
        let p = plan(input.as_bytes(), &pieces, 1 << 20, false).unwrap();
        let done: Vec<usize> = p.tables.iter().map(|s| s.done_bytes).collect();
        assert_eq!(done, vec![8, input.find("(2)").unwrap() + 3]);
        assert_eq!(p.statements, 3);
    }

    /// A dump of a database dbhelper seeded holds its marker table: the statements on it
    /// are left out (and counted), nothing else is.
    #[test]
    fn accounts_a_dump_creates() {
        type Account = Option<(Vec<u8>, Vec<u8>)>;
        let a = |u: &str, h: &str| Some((u.as_bytes().to_vec(), h.as_bytes().to_vec()));
        let cases: &[(&str, Account)] = &[
            (
                "CREATE USER `reader`@`%` IDENTIFIED BY PASSWORD '*D8'",
                a("reader", "%"),
            ),
            ("CREATE USER IF NOT EXISTS 'app'@'LocalHost'", a("app", "localhost")),
            ("create or replace user bob@localhost", a("bob", "localhost")),
            ("CREATE USER carol", a("carol", "%")),
            ("CREATE ROLE r", None),
            ("CREATE TABLE user (a int)", None),
            ("GRANT SELECT ON *.* TO x@y", None),
        ];
        for (sql, want) in cases {
            assert_eq!(&created_account(sql.as_bytes()), want, "{sql}");
        }
    }

    #[test]
    fn the_marker_table_of_a_dumped_seed_is_left_out() {
        let input = b"DROP TABLE IF EXISTS `_dbhelper_seed`;\n\
            CREATE TABLE `_dbhelper_seed` (table_name varchar(64));\n\
            LOCK TABLES `_dbhelper_seed` WRITE;\n\
            /*!40000 ALTER TABLE `_dbhelper_seed` DISABLE KEYS */;\n\
            INSERT INTO `_dbhelper_seed` VALUES ('t');\n\
            UNLOCK TABLES;\n\
            CREATE TABLE t (a int);\n\
            INSERT INTO t VALUES (1);\n\
            LOCK TABLES `_dbhelper_seed` WRITE, t WRITE;\n\
            INSERT INTO `_dbhelper_seed_x` VALUES (1);\n";
        let pieces = split(input).unwrap();
        let mut p = Planner::new(1 << 20, false);
        for piece in &pieces {
            if let PieceKind::Statement { number, .. } = piece.kind {
                p.statement(&input[piece.range.clone()], number, piece.line, piece.range.end)
                    .unwrap();
            }
        }
        assert_eq!(p.marker_statements(), 5);
        assert_eq!(
            describe(p.finish().tables),
            vec![
                ("UNLOCK TABLES".to_owned(), 6..=6),
                ("CREATE TABLE t (a int)".to_owned(), 7..=7),
                ("INSERT INTO t VALUES (1)".to_owned(), 8..=8),
                ("LOCK TABLES `_dbhelper_seed` WRITE, t WRITE".to_owned(), 9..=9),
                ("INSERT INTO `_dbhelper_seed_x` VALUES (1)".to_owned(), 10..=10),
            ]
        );
    }

    fn planned(input: &[u8], replay_system: bool) -> Result<Plan<'_>, PlanError> {
        let pieces = split(input).unwrap();
        plan(input, &pieces, 1 << 20, replay_system)
    }

    /// A step gives back each dump statement it covers as the dump wrote it (the loader
    /// replays a refused merge one statement at a time to name the one the server
    /// refuses), and nothing past them; a lone insert is a plain step, not a merge of one.
    #[test]
    fn a_step_gives_back_each_statement_it_covers() {
        let input = b"INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2),(3);\nCREATE TABLE u (x int);\nINSERT INTO t VALUES (4);\n";
        let p = planned(input, false).unwrap();
        assert_eq!(p.tables.len(), 3, "{:?}", p.tables);
        let (merged, create, single) = (&p.tables[0], &p.tables[1], &p.tables[2]);
        let m = merged.merged.as_ref().unwrap();
        assert_eq!(
            (m.head, m.lines.clone(), m.rows.len()),
            ("INSERT INTO t VALUES ".len(), vec![1, 2], 2)
        );
        assert_eq!(s(&merged.statement(0)), "INSERT INTO t VALUES (1)");
        assert_eq!(s(&merged.statement(1)), "INSERT INTO t VALUES (2),(3)");
        assert_eq!(s(&merged.statement(2)), "");
        assert_eq!(create.merged, None);
        assert_eq!(s(&create.statement(0)), "CREATE TABLE u (x int)");
        assert_eq!(s(&create.statement(1)), "");
        assert_eq!(single.merged, None);
        assert_eq!(s(&single.statement(0)), "INSERT INTO t VALUES (4)");
        assert_eq!(s(&single.statement(1)), "");
    }

    /// Names of up to `MAX_DATABASE_NAME` bytes are staged; longer ones and names not in
    /// UTF-8 are refused, shown as far as they can be read.
    #[test]
    fn database_names_are_taken_up_to_the_limit_and_shown_when_refused() {
        let at_limit = "d".repeat(MAX_DATABASE_NAME);
        let stmt = format!("USE `{at_limit}`;");
        let p = planned(stmt.as_bytes(), false).unwrap();
        assert_eq!(p.databases[0].name.as_deref(), Some(at_limit.as_str()));
        let over = "d".repeat(MAX_DATABASE_NAME + 1);
        let err = planned(format!("USE `{over}`;").as_bytes(), false).unwrap_err();
        assert_eq!(
            err,
            PlanError::BadDatabaseName {
                name: over,
                line: 1,
                reason: "which is empty or longer than 48 bytes"
            }
        );
        let err = planned(b"\nUSE `caf\xe9`;", false).unwrap_err();
        assert_eq!(
            err,
            PlanError::BadDatabaseName {
                name: "caf\u{fffd}".into(),
                line: 2,
                reason: "which is not UTF-8"
            }
        );
    }

    /// The first `CREATE DATABASE` of a name gives its options; a later one does not
    /// replace them, and a system schema (replayed, never created) has none.
    #[test]
    fn the_first_create_database_gives_the_options() {
        let input = b"CREATE DATABASE a CHARACTER SET latin1;\nCREATE DATABASE a CHARACTER SET utf8mb4;\nCREATE DATABASE mysql CHARACTER SET latin1;\nUSE mysql;\nINSERT INTO db VALUES (1);\nINSERT INTO db VALUES (2);\nUSE a;\nINSERT INTO t VALUES (1);\n";
        let p = planned(input, true).unwrap();
        let options: Vec<_> = p.databases.iter().map(|d| d.options.as_deref().map(s)).collect();
        assert_eq!(options, [Some(" CHARACTER SET latin1".to_owned()), None]);
        // The system schema's inserts are replayed one by one after the swap, never merged
        // or staged; the others are staged.
        assert_eq!(
            describe(p.objects),
            vec![
                ("<use 1>".to_owned(), 4..=4),
                ("INSERT INTO db VALUES (1)".to_owned(), 5..=5),
                ("INSERT INTO db VALUES (2)".to_owned(), 6..=6),
                ("<use 0>".to_owned(), 7..=7),
            ]
        );
        assert_eq!(
            describe(p.tables),
            vec![
                ("<use 0>".to_owned(), 7..=7),
                ("INSERT INTO t VALUES (1)".to_owned(), 8..=8)
            ]
        );
    }

    /// `*/` closes a version comment only inside one; elsewhere a `*` is a token.
    #[test]
    fn a_star_closes_only_a_version_comment() {
        assert_eq!(classify(b"USE a *"), Kind::Other);
        assert_eq!(classify(b"USE a */"), Kind::Other);
        assert_eq!(classify(b"/*!40000 USE a */"), Kind::Use { name: b"a".to_vec() });
        // Inside one, another version comment is a plain comment, skipped whole.
        assert_eq!(
            classify(b"/*!40000 USE a /*!50000 b */ */"),
            Kind::Use { name: b"a".to_vec() }
        );
    }

    /// An unquoted name may hold `$`, `_`, digits and any byte of a multi-byte character,
    /// as the server's own lexer allows.
    #[test]
    fn unquoted_names_take_dollars_and_non_ascii_bytes() {
        for name in ["café", "a$b", "_x9", "表"] {
            let stmt = format!("USE {name}");
            assert_eq!(
                classify(stmt.as_bytes()),
                Kind::Use {
                    name: name.as_bytes().to_vec()
                },
                "{stmt}"
            );
        }
    }

    #[test]
    fn tables_are_dealt_largest_first_to_the_least_loaded_lane() {
        // (sizes, lanes, lane of each table)
        let table: &[(&[usize], usize, &[usize])] = &[
            (&[], 4, &[]),
            (&[5], 4, &[0]),
            // A big table and its empty log table, twice (the bench's dump): in turn, both
            // big ones would go to lanes 0 and 2 and leave 1 and 3 idle.
            (&[100, 0, 100, 0], 4, &[0, 2, 1, 3]),
            (&[100, 0, 100, 0], 2, &[0, 0, 1, 1]),
            (&[3, 3, 2, 2, 2], 2, &[0, 1, 0, 1, 0]),
            // Equal sizes keep their dump order.
            (&[1, 1, 1, 1], 2, &[0, 1, 0, 1]),
            (&[7, 1, 1], 0, &[0, 0, 0]),
            (&[usize::MAX, usize::MAX, 1], 2, &[0, 1, 0]),
        ];
        for (sizes, lanes, want) in table {
            assert_eq!(deal_by_size(sizes, *lanes), *want, "{sizes:?} over {lanes}");
        }
    }

    /// A router built from the sizes of a first pass sends each table to its dealt lane
    /// in a second pass, and counts the bytes of each table's statements.
    #[test]
    fn a_second_pass_routes_by_the_sizes_of_the_first() {
        let input = "CREATE TABLE big (x int);\nINSERT INTO big VALUES (1),(2),(3),(4),(5),(6),(7),(8);\n\
                     CREATE TABLE big_log (x int);\nCREATE TABLE other (x int);\nINSERT INTO other VALUES (1),(2),(3),(4),(5);\n\
                     CREATE TABLE other_log (x int);\n";
        let p = planned(input.as_bytes(), false).unwrap();
        let mut first = Router::new(1);
        for st in &p.tables {
            assert_eq!(first.route(st), Some(Route::Lane(0)));
        }
        let sizes = first.sizes().to_vec();
        assert_eq!(sizes.len(), 4);
        assert_eq!(
            sizes[0],
            "CREATE TABLE big (x int)".len() + "INSERT INTO big VALUES (1),(2),(3),(4),(5),(6),(7),(8)".len()
        );
        assert_eq!(
            sizes[2],
            "CREATE TABLE other (x int)".len() + "INSERT INTO other VALUES (1),(2),(3),(4),(5)".len()
        );
        let mut second = Router::by_size(2, &sizes);
        let routes: Vec<Option<Route>> = p.tables.iter().map(|st| second.route(st)).collect();
        // In turn, `big` and `other` would share lane 0 and the empty tables lane 1.
        assert_eq!(routes, [0, 0, 0, 1, 1, 1].map(|l| Some(Route::Lane(l))));
    }

    /// A reader that leaves the other lanes' statements unplanned ([`Router::dealt_lane`],
    /// [`Planner::skip`]) sends its lane exactly the steps a reader planning everything
    /// sends it: merges, session statements and databases included; the first pass's
    /// sizes come out the same either way.
    #[test]
    fn skipping_the_other_lanes_statements_changes_no_lane() {
        let input = "SET NAMES utf8mb4;\nCREATE TABLE a (x int);\nCREATE TABLE b (x int);\n\
                     INSERT INTO a VALUES (1);\nINSERT INTO a VALUES (2);\nINSERT INTO b VALUES (3);\n\
                     INSERT INTO a VALUES (4);\nSET @x = 1;\nINSERT INTO b VALUES (5);\nINSERT INTO b VALUES (6);\n\
                     CREATE TABLE c (x int);\nINSERT INTO c VALUES (7),(8);\nUSE other\nCREATE TABLE a (y int);\n\
                     INSERT INTO a VALUES (9);\nINSERT INTO a VALUES (10);\nUSE first\nINSERT INTO a VALUES (11);\n";
        let pieces = split(input.as_bytes()).unwrap();
        let statements: Vec<(&[u8], usize, usize, usize)> = pieces
            .iter()
            .filter_map(|p| match p.kind {
                PieceKind::Statement { number, .. } => {
                    Some((&input.as_bytes()[p.range.clone()], number, p.line, p.range.end))
                }
                _ => None,
            })
            .collect();
        // The first pass, counting sizes with and without skipping.
        let sizes = |skipping: bool| {
            let mut planner = Planner::new(0, false);
            let mut router = Router::new(1);
            for &(bytes, number, line, end) in &statements {
                if !(skipping && router.dealt_lane(bytes).is_some() && planner.skip(number)) {
                    planner.statement(bytes, number, line, end).unwrap();
                }
                for step in planner.take_tables() {
                    router.route(&step).unwrap();
                }
            }
            for step in planner.finish().tables {
                router.route(&step).unwrap();
            }
            router.sizes().to_vec()
        };
        let first = sizes(false);
        assert_eq!(sizes(true), first);
        // The loading pass of lane `lane` of 2, with merges up to 40 bytes.
        let lane_steps = |lane: usize, skipping: bool| {
            let mut planner = Planner::new(40, false);
            let mut router = Router::by_size(2, &first);
            let mut mine = Vec::new();
            let mut keep = |router: &mut Router, step: Step<'static>| match router.route(&step) {
                Some(Route::Every) => mine.push(step),
                Some(Route::Lane(l)) if l == lane => mine.push(step),
                _ => {}
            };
            for &(bytes, number, line, end) in &statements {
                let theirs = skipping && router.dealt_lane(bytes).is_some_and(|l| l != lane);
                if !(theirs && planner.skip(number)) {
                    planner.statement(bytes, number, line, end).unwrap();
                }
                let ready: Vec<Step<'static>> = planner.take_tables().collect();
                for step in ready {
                    keep(&mut router, step);
                }
            }
            for step in planner.finish().tables {
                keep(&mut router, step);
            }
            mine
        };
        for lane in 0..2 {
            let all = lane_steps(lane, false);
            assert!(
                all.iter().any(|s| s.merged.is_some()),
                "lane {lane}: no merge to compare"
            );
            assert_eq!(lane_steps(lane, true), all, "lane {lane}");
        }
    }

    /// Without sizes, tables are dealt to the lanes in turn as they first appear, and keep their lane.
    #[test]
    fn tables_take_the_lanes_in_turn() {
        let p = planned(
            b"CREATE TABLE a (x int);\nCREATE TABLE b (x int);\nCREATE TABLE c (x int);\nCREATE TABLE d (x int);\nINSERT INTO b VALUES (1);\nSET @x = 1;\nINSERT INTO d VALUES (1);\n",
            false,
        )
        .unwrap();
        let mut router = Router::new(3);
        let routes: Vec<Option<Route>> = p.tables.iter().map(|st| router.route(st)).collect();
        assert_eq!(
            routes,
            [0, 1, 2, 0, 1]
                .map(|l| Some(Route::Lane(l)))
                .into_iter()
                .chain([Some(Route::Every), Some(Route::Lane(0))])
                .collect::<Vec<_>>()
        );
        assert_eq!(router.tables(), 4);
    }

    /// The keyword of each object kind is the one `classify` reads (the loader builds its
    /// `DROP … IF EXISTS` from it).
    #[test]
    fn object_keywords_read_back_as_their_kind() {
        use ObjectKind::*;
        for kind in [View, Trigger, Procedure, Function, Event] {
            let stmt = format!("DROP {} IF EXISTS `x`", kind.keyword());
            match classify(stmt.as_bytes()) {
                Kind::Object {
                    verb, kind: got, name, ..
                } => {
                    assert_eq!((verb, got, name), (Verb::Drop, kind, Some(b"x".to_vec())), "{stmt}");
                }
                other => assert_eq!(format!("{other:?}"), "an object", "{stmt}"),
            }
        }
    }

    /// An unquoted `user@host` definer is read as one; `CURRENT_USER` is no definer.
    #[test]
    fn unquoted_definers_are_read() {
        let definer = |stmt: &str| match classify(stmt.as_bytes()) {
            Kind::Object { definer, .. } => definer.map(|d| (s(&d.user), s(&d.host))),
            other => Some((format!("{other:?}"), String::new())),
        };
        assert_eq!(
            definer("CREATE DEFINER=root@localhost PROCEDURE p() SELECT 1"),
            Some(("root".into(), "localhost".into()))
        );
        assert_eq!(definer("CREATE DEFINER=CURRENT_USER PROCEDURE p() SELECT 1"), None);
        assert_eq!(definer("CREATE DEFINER=current_user() VIEW v AS SELECT 1"), None);
    }

    /// `ALTER DATABASE` with nothing to alter is no statement for the database.
    #[test]
    fn alter_database_needs_options() {
        assert_eq!(classify(b"ALTER DATABASE a"), Kind::Other);
        assert_eq!(classify(b"ALTER DATABASE a /* nothing */"), Kind::Other);
        assert!(matches!(
            classify(b"ALTER DATABASE a CHARACTER SET latin1"),
            Kind::AlterDatabase { .. }
        ));
    }

    /// What an `INSERT` must look like to be merged: `VALUES` rows and nothing else, with
    /// any spacing around the commas, and no comment inside a row (it could hide a
    /// parenthesis); `INSERT … SELECT` and `INSERT … SET` are sent as they are.
    #[test]
    fn inserts_that_merge_and_inserts_that_do_not() {
        let rows = |stmt: &str| match classify(stmt.as_bytes()) {
            Kind::Insert { rows, .. } => Some(s(rows)),
            _ => None,
        };
        let cases: &[(&str, Option<&str>)] = &[
            ("INSERT INTO t VALUES (1), (2)", Some("(1), (2)")),
            ("INSERT INTO t VALUES (1) ,(2)", Some("(1) ,(2)")),
            ("INSERT INTO t VALUES (1-2),(3/4),(-5)", Some("(1-2),(3/4),(-5)")),
            ("INSERT INTO t VALUES (1 # c\n)", None),
            ("INSERT INTO t VALUES (1 -- c\n)", None),
            ("INSERT INTO t VALUES (1 /* c */)", None),
            ("INSERT INTO t VALUES (2*/1)", Some("(2*/1)")),
            (
                "INSERT INTO t SELECT * FROM u ON DUPLICATE KEY UPDATE a=VALUES(a)",
                None,
            ),
            ("INSERT INTO t SET a=1 ON DUPLICATE KEY UPDATE a=VALUES(a)", None),
        ];
        for (stmt, want) in cases {
            assert_eq!(rows(stmt).as_deref(), *want, "{stmt:?}");
        }
    }
}
