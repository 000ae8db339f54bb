# shellcheck shell=bash
# Shared by images/*/build.sh (sourced, not run): helpers that assemble a FROM scratch root
# file system out of this machine's own Debian packages, and build an image from it.
#
# The caller sets `prog` (the name in messages) and `root` (the root file system being
# assembled) before calling `put`, `put_elf` or `libs_of`.

log() { echo "$prog: $*" >&2; }
die() { echo "$prog: $*" >&2; exit 1; }

# ensure_packages PKG...: installs the Debian packages that are missing (apt-get).
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    local SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# require_static_busybox: dies unless /bin/busybox is the static build (busybox-static).
require_static_busybox() {
  [ -x /bin/busybox ] || die "/bin/busybox is missing: install busybox-static"
  if ldd /bin/busybox >/dev/null 2>&1; then die "/bin/busybox is dynamically linked: install busybox-static"; fi
}

# put SRC [DEST]: copies a file to the same path (or DEST) in the image, following
# symlinks; /lib* goes under /usr (merged /usr, as on Debian 12).
put() {
  local src="$1" dest="${2:-$1}"
  case "$dest" in /lib/*|/lib64/*) dest="/usr$dest" ;; esac
  mkdir -p "$root$(dirname "$dest")"
  cp -L "$src" "$root$dest"
}

# libs_of ELF: every shared library an ELF file needs (ldd walks the whole tree), with the
# dynamic loader; fails naming a library that is not installed.
libs_of() {
  ldd "$1" | awk -v f="$1" -v p="$prog" '
    /not found/ { print p ": " f " needs " $1 ", which is not installed" > "/dev/stderr"; bad = 1; next }
    /=>/ { if ($3 ~ /^\//) print $3; next }
    $1 ~ /^\// { print $1 }
    END { exit bad }'
}

# put_elf FILE...: copies ELF files and every shared library they need.
put_elf() {
  local f lib libs=""
  for f in "$@"; do
    libs+="$(libs_of "$f")"$'\n' || die "cannot copy $f: a shared library it needs is missing"
  done
  for f in "$@"; do put "$f"; done
  while read -r lib; do
    [ -z "$lib" ] || put "$lib"
  done < <(sort -u <<<"$libs")
}

# merged_usr: /lib and /lib64 as links into /usr, as on Debian 12.
merged_usr() {
  mkdir -p "$root/usr/lib" "$root/usr/lib64"
  ln -s usr/lib "$root/lib"
  ln -s usr/lib64 "$root/lib64"
}

# pack_rootfs CONTEXT: writes CONTEXT/rootfs.tar, reproducibly (sorted names, mtime 0,
# owner root): the same files give the same tar, so Docker's build cache answers and the
# image id stays the same.
pack_rootfs() {
  local context="$1"
  mkdir -p "$context"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$context/rootfs.tar" .
}

# docker_build TAG CONTEXT LOG [docker build options...]: builds quietly; on failure shows
# the build log and dies. (The classic builder's deprecation notice stays in LOG.)
docker_build() {
  local tag="$1" context="$2" buildlog="$3"
  shift 3
  docker build -q -t "$tag" "$@" "$context" >"$buildlog" 2>&1 \
    || { cat "$buildlog" >&2; die "docker build of $tag failed"; }
  log "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))"
}
