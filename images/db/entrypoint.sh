#!/bin/sh
# The db image's entrypoint (busybox sh): initialises an empty datadir once, then replaces
# itself with mariadbd in the foreground, which runs as the user `mysql` (uid 999).
#
# First start (no /var/lib/mysql/mysql yet): the root password comes from
# MARIADB_ROOT_PASSWORD_FILE, MYSQL_ROOT_PASSWORD_FILE (first line of the file),
# MARIADB_ROOT_PASSWORD or MYSQL_ROOT_PASSWORD; without one the container exits 1 and
# the datadir stays empty. The system tables are created with `mariadbd --bootstrap` in a
# staging directory inside the datadir and moved into place only when complete (`mysql/`
# last), so an interrupted first start is simply redone. root gets the password on
# 'root'@'localhost' and 'root'@'%'; the other default accounts are removed.
# Later starts: the datadir is used as it is; the password variables are ignored.
#
# Arguments are extra mariadbd options: `docker run sidekick/db --max-connections=500`.
set -eu

datadir=/var/lib/mysql
stage="$datadir/.sidekick-init"
share=/usr/share/mysql

log() { echo "db-entrypoint: $*" >&2; }
die() { log "$*"; exit 1; }

[ "${1:-}" = mariadbd ] && shift

# As root (the default), mariadbd drops to `mysql` itself (--user); run with
# `docker run --user 999:999`, the datadir must already belong to that user.
as_user=""
if [ "$(id -u)" = 0 ]; then
  as_user="--user=mysql"
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld
  # A fresh bind mount belongs to whoever made it; mariadbd must own its datadir.
  [ "$(stat -c %u "$datadir")" = 999 ] || chown mysql:mysql "$datadir"
fi

# The root password, from exactly one place; prints it on stdout.
root_password() {
  found=""
  for name in MARIADB_ROOT_PASSWORD MYSQL_ROOT_PASSWORD; do
    eval "value=\${$name:-}"
    eval "file=\${${name}_FILE:-}"
    if [ -n "$value" ] && [ -n "$file" ]; then
      die "both $name and ${name}_FILE are set: give only one"
    fi
    if [ -n "$file" ]; then
      [ -r "$file" ] || die "${name}_FILE names '$file', which cannot be read"
      value="$(head -n 1 "$file" | tr -d '\r')"
      [ -n "$value" ] || die "${name}_FILE names '$file', whose first line is empty"
    fi
    if [ -n "$value" ]; then
      printf '%s' "$value"
      found=1
      break
    fi
  done
  [ -n "$found" ] || die "the datadir is empty and no root password is given: set MARIADB_ROOT_PASSWORD_FILE (or MARIADB_ROOT_PASSWORD, MYSQL_ROOT_PASSWORD, MYSQL_ROOT_PASSWORD_FILE)"
}

# The SQL that mariadb-install-db would run (without the test db, the help tables and the
# sys schema), then the accounts. The password travels as hex, so no character in it can
# break the SQL, and only through this pipe: never a command line, never a file.
bootstrap_sql() {
  echo "CREATE DATABASE IF NOT EXISTS mysql;"
  echo "USE mysql;"
  echo "SET @auth_root_socket=NULL;"
  cat "$share/mysql_system_tables.sql" "$share/mysql_performance_tables.sql" \
    "$share/mysql_system_tables_data.sql" "$share/maria_add_gis_sp_bootstrap.sql"
  cat <<EOF
-- The grant tables are written directly: in bootstrap mode account statements are refused.
DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost');
DELETE FROM mysql.proxies_priv WHERE Host <> 'localhost';
SET @hash = PASSWORD(CONVERT(X'$1' USING utf8mb4));
UPDATE mysql.global_priv
   SET Priv = JSON_SET(Priv, '\$.plugin', 'mysql_native_password', '\$.authentication_string', @hash,
                       '\$.password_last_changed', UNIX_TIMESTAMP())
 WHERE User = 'root' AND Host = 'localhost';
SET @hash = NULL;
INSERT INTO mysql.global_priv SELECT '%', 'root', Priv FROM mysql.global_priv WHERE User = 'root' AND Host = 'localhost';
REPLACE INTO mysql.proxies_priv VALUES ('localhost', 'root', '', '', 1, '', NOW()), ('%', 'root', '', '', 1, '', NOW());
EOF
}

initialise() {
  password="$(root_password)" || exit 1
  hex="$(printf '%s' "$password" | od -A n -v -t x1 | tr -d ' \n')"
  password=""
  log "initialising the empty datadir $datadir"
  rm -rf "$stage"
  mkdir "$stage"
  [ -z "$as_user" ] || chown mysql:mysql "$stage"
  if ! bootstrap_sql "$hex" | mariadbd $as_user --bootstrap --datadir="$stage" --skip-networking \
    --enforce-storage-engine="" --max-allowed-packet=8M --net-buffer-length=16K "$@" >/tmp/bootstrap.log 2>&1; then
    grep -v '\[Note\]' /tmp/bootstrap.log >&2 || true
    rm -rf "$stage"
    die "mariadbd --bootstrap failed; the datadir is left empty"
  fi
  hex=""
  rm -f /tmp/bootstrap.log
  # What mariadb-install-db writes, so mariadb-upgrade knows the tables' version.
  mariadbd --version | sed -n 's/.* Ver \([0-9.]*-MariaDB\).*/\1/p' >"$stage/mysql_upgrade_info"
  # Everything but mysql/ first: mysql/ is what marks the datadir as initialised.
  for f in "$stage"/*; do
    [ "$f" = "$stage/mysql" ] || mv "$f" "$datadir/"
  done
  mv "$stage/mysql" "$datadir/mysql"
  rmdir "$stage"
  log "datadir initialised; root may log in from any host with the password"
}

if [ -d "$datadir/mysql" ]; then
  log "datadir $datadir is initialised: starting"
else
  # Anything else in it (another server's files, a half-finished move) is not ours to delete.
  others="$(ls -A "$datadir" | grep -v -x -e lost+found -e .sidekick-init || true)"
  [ -z "$others" ] || die "the datadir $datadir holds files ($(echo $others)) but no mysql/: not a MariaDB datadir; empty it to initialise a new one"
  initialise "$@"
fi
unset MARIADB_ROOT_PASSWORD MYSQL_ROOT_PASSWORD MARIADB_ROOT_PASSWORD_FILE MYSQL_ROOT_PASSWORD_FILE

# mariadbd becomes PID 1: docker stop's SIGTERM reaches it and it shuts down cleanly.
exec mariadbd $as_user "$@"
