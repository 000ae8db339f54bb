#!/usr/bin/env bash
# Builds the `db` image (MariaDB) FROM scratch, out of this machine's own Debian
# mariadb-server package: no registry is needed.
#
#   images/db/build.sh [--tag TAG] [--keep DIR]
#
# Steps: make sure mariadb-server and busybox-static are installed; copy into a fresh root
# file system what mariadbd needs at run time (the binary, the shared libraries `ldd`
# names and the dynamic loader, the English error messages, the character sets, the SQL
# that creates the system tables, our my.cnf, /etc/passwd with the user mysql (uid 999),
# busybox as /bin/sh for the entrypoint); pack it as reproducible tars (sorted, mtime 0;
# the server's own directories owned by mysql) and `docker build` a FROM scratch
# Dockerfile that ADDs them. Running it again gives the same tars, so Docker's cache
# answers and the image id stays the same. Prints the tag on its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tag="sidekick/db:latest"
keep=""
while (($#)); do
  case "$1" in
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --keep) keep="${2:?--keep needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

mysql_uid=999   # the user mariadbd runs as (the official images' uid, so volumes carry over)
prog=build.sh
# shellcheck source=../lib/rootfs.sh
source "$here/../lib/rootfs.sh"   # log, die, ensure_packages, put, put_elf, ...

# One build at a time on this machine (tests and the demo may start several at once).
exec 9>"${TMPDIR:-/tmp}/sidekick-db-build.lock"
flock 9

# 1. The packages the image is made of.
ensure_packages mariadb-server busybox-static
mariadbd=/usr/sbin/mariadbd
share=/usr/share/mysql
sql=(mysql_system_tables.sql mysql_performance_tables.sql mysql_system_tables_data.sql maria_add_gis_sp_bootstrap.sql)
[ -x "$mariadbd" ] || die "$mariadbd is missing (package mariadb-server-core)"
for f in "${sql[@]}" english/errmsg.sys charsets/Index.xml; do
  [ -f "$share/$f" ] || die "$share/$f is missing (package mariadb-server-core)"
done
require_static_busybox
command -v docker >/dev/null || die "docker is not installed"

# 2. The root file system, in a fresh directory.
work="$(mktemp -d "${TMPDIR:-/tmp}/db-image.XXXXXX")"
cleanup() { if [ -n "$keep" ]; then rm -rf "$keep"; mv "$work" "$keep"; else rm -rf "$work"; fi; }
trap cleanup EXIT
root="$work/rootfs"
mkdir -p "$root"/{bin,etc/mysql,usr/sbin}
mkdir -m 1777 "$root/tmp"
merged_usr

put_elf "$mariadbd"
put /bin/busybox /bin/busybox
ln -s busybox "$root/bin/sh"
for f in "${sql[@]}" english/errmsg.sys; do put "$share/$f"; done
mkdir -p "$root$share/charsets"
cp "$share"/charsets/*.xml "$root$share/charsets/"
put "$here/my.cnf" /etc/mysql/my.cnf
install -m 0755 "$here/entrypoint.sh" "$root/entrypoint.sh"
printf 'root:x:0:0:root:/root:/bin/sh\nmysql:x:%s:%s:MariaDB:/nonexistent:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
  "$mysql_uid" "$mysql_uid" >"$root/etc/passwd"
printf 'root:x:0:\nmysql:x:%s:\nnogroup:x:65534:\n' "$mysql_uid" >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
chmod -R a+rX "$root"

# The directories the server writes, owned by mysql: a new named volume on
# /var/lib/mysql starts with this owner, and `docker run --user 999:999` works too.
owned="$work/owned"
mkdir -p "$owned/var/lib/mysql" "$owned/run/mysqld"
chmod 0750 "$owned/var/lib/mysql"
chmod 0755 "$owned/run/mysqld"

# 3. Reproducible tars, and the image.
context="$work/context"
pack_rootfs "$context"
tar --sort=name --mtime=@0 --owner="$mysql_uid" --group="$mysql_uid" --numeric-owner -C "$owned" \
  -cf "$context/mysql-owned.tar" ./var/lib/mysql ./run/mysqld
cp "$here/Dockerfile" "$context/Dockerfile"
log "root file system: $(du -sh "$root" | cut -f1), building $tag"
docker_build "$tag" "$context" "$work/build.log"
echo "$tag"
