#!/usr/bin/env bash
# Builds the `web` image (nginx + php-fpm + the world pages) FROM scratch, out of this
# machine's own Debian packages: no registry is needed.
#
#   images/web/build.sh [--tag TAG] [--keep DIR]
#
# Steps: make sure nginx, php8.2-fpm, php8.2-mysql and busybox-static are installed; copy
# into a fresh root file system exactly what the two servers need (binaries, the shared
# libraries `ldd` names and the dynamic loader, PHP's mysqlnd/mysqli/pdo/pdo_mysql
# extensions, our configuration, the pages, busybox as /bin/sh for the entrypoint); pack it
# as a reproducible tar (sorted, mtime 0, owner root) and `docker build` a FROM scratch
# Dockerfile that ADDs it. Running it again gives the same tar, so Docker's cache answers
# and the image id stays the same. Prints the tag on its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tag="sidekick/web:latest"
keep=""
while (($#)); do
  case "$1" in
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --keep) keep="${2:?--keep needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

php_version=8.2
php_api=20220829   # PHP 8.2's extension API: /usr/lib/php/$php_api
web_uid=10080      # the non-root user both servers run as
packages=(nginx "php$php_version-fpm" "php$php_version-mysql" busybox-static)

prog=build.sh
# shellcheck source=../lib/rootfs.sh
source "$here/../lib/rootfs.sh"   # log, die, ensure_packages, put, libs_of, put_elf, ...

# One build at a time on this machine (tests and the demo may start several at once):
# two first builds racing would give two image ids for the same content.
exec 9>"${TMPDIR:-/tmp}/sidekick-web-build.lock"
flock 9

# 1. The packages the image is made of.
ensure_packages "${packages[@]}"
nginx_bin=/usr/sbin/nginx
fpm_bin="/usr/sbin/php-fpm$php_version"
ext_dir="/usr/lib/php/$php_api"
extensions=(mysqlnd pdo mysqli pdo_mysql)   # load order: mysqlnd and pdo before their users
busybox=/bin/busybox
for f in "$nginx_bin" "$fpm_bin" "$busybox"; do [ -x "$f" ] || die "$f is missing"; done
for e in "${extensions[@]}"; do [ -f "$ext_dir/$e.so" ] || die "$ext_dir/$e.so is missing"; done
if ldd "$busybox" >/dev/null 2>&1; then die "$busybox is dynamically linked: install busybox-static"; fi
command -v docker >/dev/null || die "docker is not installed"

# 2. The root file system, in a fresh directory.
work="$(mktemp -d "${TMPDIR:-/tmp}/web-image.XXXXXX")"
cleanup() { if [ -n "$keep" ]; then rm -rf "$keep"; mv "$work" "$keep"; else rm -rf "$work"; fi; }
trap cleanup EXIT
root="$work/rootfs"
mkdir -p "$root"/{bin,etc,srv,tmp,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,usr/share/zoneinfo}
chmod 1777 "$root/tmp"
# Merged /usr, as on Debian 12: /lib and /lib64 point into /usr.
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"

ext_files=()
for e in "${extensions[@]}"; do ext_files+=("$ext_dir/$e.so"); done
put_elf "$nginx_bin" "$fpm_bin" "${ext_files[@]}"

# busybox: /bin/sh for the entrypoint (its applets run inside the shell: sed, mkdir, sleep).
put "$busybox" /bin/busybox
ln -s busybox "$root/bin/sh"

# Configuration: ours for the servers, Debian's for the PHP extensions and fastcgi.
put "$here/nginx.conf" /etc/nginx/nginx.conf.in
put /etc/nginx/fastcgi_params
put /etc/nginx/mime.types
put "$here/php-fpm.conf" "/etc/php/$php_version/fpm/php-fpm.conf"
put "$here/php.ini" "/etc/php/$php_version/fpm/php.ini"
prio=10
for e in "${extensions[@]}"; do
  case "$e" in mysqli|pdo_mysql) prio=20 ;; esac
  put "/etc/php/$php_version/mods-available/$e.ini" "/etc/php/$php_version/fpm/conf.d/$prio-$e.ini"
done
# PHP on Debian reads time zones from the system database; the pages use UTC.
put /usr/share/zoneinfo/UTC /usr/share/zoneinfo/UTC
printf 'root:x:0:0:root:/root:/bin/sh\nweb:x:%s:%s:web:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' \
  "$web_uid" "$web_uid" >"$root/etc/passwd"
printf 'root:x:0:\nweb:x:%s:\nnogroup:x:65534:\n' "$web_uid" >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"

# The entrypoint and the application.
install -m 0755 "$here/entrypoint.sh" "$root/entrypoint.sh"
cp -r "$here/www" "$here/lib" "$root/srv/"
if command -v php >/dev/null; then
  for f in "$root"/srv/www/*.php "$root"/srv/lib/*.php; do php -l "$f" >/dev/null || die "PHP syntax error in $f"; done
fi
chmod -R a+rX "$root"

# 3. A reproducible tar, and the image.
context="$work/context"
mkdir -p "$context"
pack_rootfs "$context"
cp "$here/Dockerfile" "$context/Dockerfile"
log "root file system: $(du -sh "$root" | cut -f1), building $tag"
docker_build "$tag" "$context" "$work/build.log" --build-arg "WEB_UID=$web_uid"
echo "$tag"
