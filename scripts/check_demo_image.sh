#!/usr/bin/env bash
# Check the `demo` image (docker/demo.Dockerfile) without a container engine: make a bare Debian
# bookworm root with debootstrap (the image's base is Debian 12), then replay the Dockerfile in it
# with chroot — the same COPYs and the same docker/demo_steps.sh RUN steps, as root — and finally
# the image's CMD, `make demo`, as the image's non-root user. Passes when `make demo` exits 0 and
# prints its success-rate line. Needs root, a Debian/Ubuntu host, the Debian mirror and PyPI
# (several hundred MB: ROS 2 wheels, ONNX Runtime, MuJoCo, OGBench), and from 1.5 minutes (a fast line) to many.
#   scripts/check_demo_image.sh           # everything under a fresh /var/tmp/dfp-demo-image.*, removed at exit
#   scripts/check_demo_image.sh --keep    # keep that root afterwards (chroot into it to look around)
# DEBIAN_MIRROR overrides the mirror. Behind a TLS-inspecting proxy, the host's own CA certificates
# (/usr/local/share/ca-certificates) are copied into the root, as a `docker build` there would need.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
app=/opt/dfp_ros          # the Dockerfile's WORKDIR
demo_uid=1000             # the image's USER (dfp, made by `demo_steps.sh system`)
keep=0
case "${1:-}" in
  "") ;;
  --keep) keep=1 ;;
  *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
esac

die() { echo "check_demo_image: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mount need it)"
if ! command -v debootstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

work=$(mktemp -d /var/tmp/dfp-demo-image.XXXXXX)
root=$work/root
mounted=()
start=$SECONDS
phase() { echo "== [$((SECONDS - start)) s] $*"; }

cleanup() {
  local status=$? proc m
  # Processes still running inside this root (a demo cut short) would keep its mounts busy.
  for proc in /proc/[0-9]*; do
    if [ "$(readlink "$proc/root" 2>/dev/null)" = "$root" ]; then kill -9 "${proc#/proc/}" 2>/dev/null || true; fi
  done
  for ((m = ${#mounted[@]} - 1; m >= 0; m--)); do
    umount "${mounted[m]}" 2>/dev/null || umount -l "${mounted[m]}" 2>/dev/null || true
  done
  if [ "$keep" = 1 ]; then
    echo "check_demo_image: kept the root at $root"
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

phase "debootstrap $suite (minbase) from $mirror into $root"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log"; die "debootstrap failed"; }

# What `docker run` gives a container: /proc, /sys, a private /dev/shm of 64 MB (Docker's default;
# Fast DDS puts its shared-memory transport there), /dev/pts, and the host's DNS.
mount_in_root() {  # TYPE SOURCE TARGET OPTIONS
  mkdir -p "$root$3"
  mount -t "$1" -o "$4" "$2" "$root$3"
  mounted+=("$root$3")
}
mount_in_root proc proc /proc nosuid,nodev,noexec
mount_in_root sysfs sysfs /sys ro,nosuid,nodev,noexec
mount_in_root tmpfs shm /dev/shm nosuid,nodev,size=64m,mode=1777
mount_in_root devpts devpts /dev/pts newinstance,ptmxmode=0666,mode=620
cp /etc/resolv.conf "$root/etc/resolv.conf"

# The environment of a RUN step: the Dockerfile's ENV, nothing inherited from this shell.
run_env=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
         LANG=C.UTF-8 PYTHONUNBUFFERED=1)
shopt -s nullglob
host_cas=(/usr/local/share/ca-certificates/*.crt)
shopt -u nullglob
if [ ${#host_cas[@]} -gt 0 ]; then
  phase "adding the host's CA certificates: ${host_cas[*]##*/}"
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp "${host_cas[@]}" "$root/usr/local/share/ca-certificates/"
  # Debian's pip reads its own CA bundle unless told otherwise.
  run_env+=(PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
fi

run_step() {  # USER_ID COMMAND: a RUN step (or the CMD) in WORKDIR, as that user
  local user=$1 home=/root
  shift
  [ "$user" = 0 ] || home=$(chroot "$root" getent passwd "$user" | cut -d: -f6)
  chroot --userspec="$user:$user" "$root" /usr/bin/env -i "${run_env[@]}" HOME="$home" \
    /bin/bash -c "cd $app && $*"
}

copy_context() {  # PATH...: COPY from the build context (the repository, less .dockerignore) into WORKDIR
  local excludes
  excludes=$(mktemp)
  grep -vE '^[[:space:]]*(#|$)' "$repo/.dockerignore" >"$excludes"
  tar -C "$repo" --exclude-from="$excludes" -cf - "$@" | tar -C "$root$app" -xf -
  rm -f "$excludes"
}

mkdir -p "$root$app"
phase "RUN demo_steps.sh system"
install -m 0755 "$repo/docker/demo_steps.sh" "$root/usr/local/bin/demo_steps.sh"
run_step 0 demo_steps.sh system

phase "RUN demo_steps.sh deps (packaging files only)"
copy_context setup.py setup.cfg package.xml resource
run_step 0 demo_steps.sh deps

phase "RUN demo_steps.sh package (the whole build context)"
copy_context .
run_step 0 demo_steps.sh package

phase "CMD make demo (as uid $demo_uid)"
run_step "$demo_uid" "timeout 1200 make demo" 2>&1 | tee "$work/demo.log" || die "make demo failed"
grep -q "success rate" "$work/demo.log" || die "make demo printed no success rate"
phase "PASS: the demo image's steps build on Debian $(cat "$root/etc/debian_version") and make demo runs"
