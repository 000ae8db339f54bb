//! The application user: created if missing, its password set, ALL granted on the database.
//!
//! `CREATE USER IF NOT EXISTS ... IDENTIFIED BY` then `ALTER USER ... IDENTIFIED BY` works on
//! MariaDB 10.x and MySQL 8 alike (the seed's `SET PASSWORD = PASSWORD(...)` does not exist
//! in MySQL 8). The password only ever travels inside those two statements: it is never
//! logged, and a server error that quotes the statement has it masked.

use crate::Error;
use crate::args::Credentials;
use crate::db::{Admin, ident};

/// The `'user'@'%'` account name.
#[must_use]
pub fn account(admin: &Admin, user: &str) -> String {
    format!("{}@'%'", admin.literal(user))
}

/// Creates or updates the app user and grants it everything on `database`.
///
/// # Errors
/// [`Error::Database`] naming the step, with the password masked.
pub async fn ensure(admin: &mut Admin, app: &Credentials, database: &str) -> Result<(), Error> {
    let password = app.password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default();
    let account = account(admin, &app.user);
    let pw = admin.literal(&password);
    let steps = [
        (
            "creating the app user",
            format!("CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {pw}"),
        ),
        (
            "setting the app user's password",
            format!("ALTER USER {account} IDENTIFIED BY {pw}"),
        ),
        (
            "granting the app user",
            format!("GRANT ALL ON {}.* TO {account}", ident(database)),
        ),
    ];
    for (what, sql) in steps {
        admin
            .exec(&format!("{what} {:?}", app.user), &sql)
            .await
            .map_err(|e| mask(e, &password))?;
    }
    tracing::info!(user = %app.user, database, "app user ready (ALL on the database, from any host)");
    Ok(())
}

/// Replaces the password wherever an error message quotes it.
#[must_use]
pub fn mask(e: Error, password: &str) -> Error {
    if password.is_empty() {
        return e;
    }
    match e {
        Error::Database {
            what,
            host,
            port,
            reason,
        } => Error::Database {
            what,
            host,
            port,
            reason: reason.replace(password, "***"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_password_in_server_errors() {
        let e = Error::Database {
            what: "setting".into(),
            host: "h".into(),
            port: 1,
            reason: "ERROR 1064 (42000): syntax error near 'hunter2''".into(),
        };
        let shown = mask(e, "hunter2").to_string();
        assert!(!shown.contains("hunter2") && shown.contains("***"), "{shown}");
    }
}
