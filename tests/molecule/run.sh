#!/usr/bin/env bash
# Molecule harness for the Tongxin roles.
#
#   tests/molecule/run.sh [--setup | --lint] [-j N] [scenario...]
#
#   (no argument)   every scenario under tests/molecule/ (a directory with a
#                   molecule.yml), in alphabetical order
#   scenario...     only these (common, redis, appliance, ...)
#   --setup         only prepare: venv, podman, base image; run nothing
#   --lint          yamllint and ansible-lint (production profile) over
#                   roles/, playbooks/, inventories/ and tests/molecule/, the
#                   doc tables, the bundle's package list and site.yml's tags
#   -j N            run N scenarios at a time (default TONGXIN_MOLECULE_JOBS,
#                   else 2): each scenario's output then goes to
#                   $TONGXIN_CACHE/molecule-logs/<scenario>.log, and a failed
#                   one's last 60 lines are printed, and at the end its
#                   last failed tasks (failure_summary)
#   --beside M [scenario...] -- COMMAND...
#                   run COMMAND in the foreground while the scenarios are
#                   prepared and run in the background, at most M at a time
#                   until COMMAND ends and then -j at a time. Their progress
#                   goes to $TONGXIN_CACHE/molecule-logs/run.log and is shown
#                   when COMMAND has ended. The exit code is non-zero if
#                   COMMAND or a scenario failed. `make test` runs pytest this
#                   way: the suite leaves most of the two cores idle (it waits
#                   on engines, sockets and timeouts), and the scenarios,
#                   niced, take what it leaves (docs/ansible.md, "Timings").
#
# Prepares what the scenarios need, each step skipped when already done:
#   1. a Python venv with the pinned tools (requirements.txt) in .venv;
#   2. podman with the runc runtime from Debian's packages (crun fails on
#      hybrid cgroups hosts), and podman defaults in containers.conf.d
#      (runtime runc, ulimits nofile 20000 / nproc 4096), and as root
#      fs.inotify.max_user_instances raised to 1024 (every host runs systemd);
#   3. the base image localhost/tongxin-debian12:latest: Debian 12 built with
#      debootstrap and `podman import`ed (no registry is involved). The rootfs
#      tarball is kept in ${TONGXIN_CACHE:-$HOME/.cache/tongxin}/images, so a
#      machine whose image store was wiped re-imports it in seconds.
#   4. when the site, multisite or bundle scenario is among them, the offline bundle
#      (appliance/scripts/bundle.sh, cached) before any scenario starts;
#   5. for a scenario of another architecture (FOREIGN_SCENARIOS: arm64), in its
#      own slot: qemu-user-static, binfmt_misc with Debian's qemu entry, and the
#      image <image>-arm64 built the same way with debootstrap --arch=arm64;
#      for a scenario of another Debian release (SUITE_SCENARIOS: oldpython on
#      bullseye, whose Python 3.9 is too old), the image localhost/tongxin-debian11;
#      for the restore scenario, in its own slot, the MinIO binary it runs
#      (appliance/scripts/s3server.sh install: built from its Go module once, cached).
# then runs `molecule --base-config base.yml test -s <scenario>` for each (longest first when
# parallel), prints each one's time and ends with the line
# `molecule: N passed, M failed in S s`. The exit code is non-zero if any failed.
#
# Environment:
#   TONGXIN_CACHE             cache root (~/.cache/tongxin)
#   TONGXIN_MOLECULE_IMAGE    image name (localhost/tongxin-debian12:latest)
#   TONGXIN_DEBIAN_MIRROR     debootstrap mirror (http://deb.debian.org/debian)
#   TONGXIN_MOLECULE_REBUILD  1: rebuild the image even if it exists
#   MOLECULE_COMMAND          molecule sub-command per scenario (test)
#   TONGXIN_MOLECULE_JOBS     scenarios at a time (2; -j overrides)
#   NICE                      prefix for heavy steps ("nice -n 10")
#   ANSIBLE_VAULT_PASSWORD_FILE  the scenarios' vault password (tests/molecule/vault-password.lab)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=$HERE/.venv
CACHE=${TONGXIN_CACHE:-${HOME:-/root}/.cache/tongxin}
IMAGE=${TONGXIN_MOLECULE_IMAGE:-localhost/tongxin-debian12:latest}
MIRROR=${TONGXIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
MOLECULE_COMMAND=${MOLECULE_COMMAND:-test}
read -r -a NICE <<<"${NICE-nice -n 10}"
# What the base image holds besides debootstrap's default (priority required +
# important, which brings systemd-sysv): enough for Ansible and a systemd boot,
# nothing a role is supposed to install itself.
IMAGE_PACKAGES=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,ca-certificates,iproute2,procps
# Bump when the recipe below changes: the image label and tarball name carry it.
IMAGE_RECIPE=4

log() { printf 'molecule-run: %s\n' "$*" >&2; }
die() { printf 'molecule-run: error: %s\n' "$*" >&2; exit 1; }
as_root() { [ "$(id -u)" = 0 ] || die "$* needs root"; }

apt_install() {  # apt_install PKG...: Debian packages, without starting their services
  as_root "installing $*"
  local policy=/usr/sbin/policy-rc.d added=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! "${NICE[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
    apt-get update -qq
    "${NICE[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
  if [ "$added" = 1 ]; then rm -f "$policy"; fi
}

# ---- 1. tools venv -------------------------------------------------------------

ensure_venv() {
  local stamp=$VENV/.installed want
  want=$(sha256sum "$HERE/requirements.txt" | cut -c1-16)
  if [ -x "$VENV/bin/molecule" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  local py=${PYTHON:-python3}
  if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3-venv
  fi
  log "installing the tools venv ($VENV)"
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
  "${NICE[@]}" "$VENV/bin/pip" install -q --upgrade pip
  "${NICE[@]}" "$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
  echo "$want" >"$stamp"
}

# ---- 2. podman -------------------------------------------------------------------

ensure_podman() {
  local need=()
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || need+=(runc)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v newuidmap >/dev/null || need+=(uidmap)
  command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
  # podman 4.3 on Debian 12 networks through CNI; catatonit is its pause/init helper
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  [ -x /usr/bin/catatonit ] || need+=(catatonit)
  command -v iptables >/dev/null || need+=(iptables)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt_install "${need[@]}"
  fi
  local dir=/etc/containers/containers.conf.d
  if [ "$(id -u)" != 0 ]; then dir=${XDG_CONFIG_HOME:-$HOME/.config}/containers/containers.conf.d; fi
  mkdir -p "$dir"
  local conf=$dir/50-tongxin.conf body
  body=$(cat <<'EOF'
# Written by tests/molecule/run.sh: defaults for Tongxin's test hosts.
# crun fails to start systemd containers on hybrid (v1 + unified) cgroups.
[engine]
runtime = "runc"

[containers]
# No higher: the hosts' own limits (see docs/ansible.md).
default_ulimits = [
  "nofile=20000:20000",
  "nproc=4096:4096",
]
EOF
)
  if [ "$(cat "$conf" 2>/dev/null)" != "$body" ]; then
    printf '%s\n' "$body" >"$conf"
    log "wrote $conf"
  fi
  # Every test host runs systemd, which takes inotify instances of the one
  # user all rootful containers share; Linux allows 128. At the suite's peak
  # (three scenarios, the lab's 18 hosts among them, and pytest) that is near
  # the edge, and past it a host's boot stops half-way ("Failed to create
  # inotify object: Too many open files") and never finishes.
  local inotify
  inotify=$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo 0)
  if [ "$inotify" -lt 1024 ]; then
    if [ "$(id -u)" = 0 ] && sysctl -q -w fs.inotify.max_user_instances=1024 2>/dev/null; then
      log "raised fs.inotify.max_user_instances from $inotify to 1024 (systemd in every test host)"
    else
      log "warning: fs.inotify.max_user_instances is $inotify; with many test hosts at once their systemd may not finish booting (raise it to 1024 as root)"
    fi
  fi
}

# ---- 3. base image ---------------------------------------------------------------

image_recipe_id() {  # image_recipe_id DEB_ARCH [SUITE]
  local suite=${2:-$SUITE}
  printf '%s|%s|%s|%s' "$IMAGE_RECIPE" "$suite" "$(suite_packages "$suite")" "$1" \
    | sha256sum | cut -c1-12
}
suite_packages() {  # suite_packages SUITE: what debootstrap includes for that suite's hosts
  case $1 in
    # The old-Python host (scenario oldpython): podman from its own archive,
    # as Kylin V10 and openEuler have it from theirs.
    bullseye) echo "$IMAGE_PACKAGES,podman" ;;
    *) echo "$IMAGE_PACKAGES" ;;
  esac
}
debian_release() {  # debian_release SUITE: its number (image and tarball names)
  case $1 in bookworm) echo 12 ;; bullseye) echo 11 ;; *) die "unknown Debian suite $1" ;; esac
}

ensure_image() {  # ensure_image [IMAGE DEB_ARCH SUITE]: the base image (the controller's architecture, bookworm by default)
  local image=${1:-$IMAGE} arch=${2:-$(dpkg --print-architecture)} suite=${3:-$SUITE} rid tarball have rel
  rid=$(image_recipe_id "$arch" "$suite")
  rel=$(debian_release "$suite")
  tarball=$CACHE/images/tongxin-debian$rel-$arch-$rid.tar
  if [ "${TONGXIN_MOLECULE_REBUILD:-0}" != 1 ] && podman image exists "$image"; then
    have=$(podman image inspect --format '{{ index .Labels "org.tongxin.recipe" }}' "$image" 2>/dev/null || true)
    if [ "$have" = "$rid" ]; then
      return 0
    fi
    log "image $image has recipe '${have:-none}', want $rid: rebuilding"
  fi
  mkdir -p "$CACHE/images"
  if [ "${TONGXIN_MOLECULE_REBUILD:-0}" = 1 ] || [ ! -s "$tarball" ]; then
    build_rootfs "$tarball" "$arch" "$suite"
  fi
  local old
  old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  log "importing $tarball as $image"
  "${NICE[@]}" podman import --quiet --os linux --arch "$arch" \
    --change 'CMD ["/sbin/init"]' \
    --change 'STOPSIGNAL SIGRTMIN+3' \
    --change "LABEL org.tongxin.recipe=$rid" \
    --change "LABEL org.tongxin.base=debian-$rel" \
    "$tarball" "$image" >/dev/null || die "podman import of $tarball failed"
  # The image this one replaced, unless a container still uses it.
  if [ -n "$old" ]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
  # Older tarballs of the same architecture (other recipes).
  find "$CACHE/images" -maxdepth 1 -name "tongxin-debian$rel-$arch-*.tar" ! -name "${tarball##*/}" -delete
}

build_rootfs() {  # build_rootfs TARBALL DEB_ARCH SUITE
  local tarball=$1 arch=$2 suite=$3 work t0=$SECONDS
  as_root "debootstrap"
  work=$(mktemp -d "$CACHE/images/.build.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  log "debootstrap $suite ($arch) into $work/rootfs (a few minutes)"
  # Another architecture's second stage runs its own binaries: through
  # qemu-user-static (ensure_binfmt registered it), as the hosts later do.
  if ! "${NICE[@]}" debootstrap --arch="$arch" --include="$(suite_packages "$suite")" \
      --components=main "$suite" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap failed"
  fi
  local r=$work/rootfs
  cat >"$r/etc/apt/sources.list" <<EOF
deb $MIRROR $suite main
deb $MIRROR $suite-updates main
deb ${MIRROR%/debian}/debian-security $suite-security main
EOF
  # Each container gets its own machine-id at first boot.
  : >"$r/etc/machine-id"
  rm -f "$r/var/lib/dbus/machine-id"
  # Units that make no sense in a container (no consoles, no kernel to tune).
  local unit
  for unit in getty@tty1.service console-getty.service systemd-udevd.service \
      systemd-udevd-control.socket systemd-udevd-kernel.socket \
      systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount \
      sys-kernel-tracing.mount; do
    ln -sf /dev/null "$r/etc/systemd/system/$unit"
  done
  # dpkg as in Debian's own container images: no fsync after every file
  # (the test hosts are thrown away, so a crash mid-install costs nothing,
  # and fsync on overlayfs was much of the roles' package installs), and
  # man-db's index not rebuilt after every install. Real hosts keep dpkg's
  # defaults. Manual pages are still unpacked: excluding them (path-exclude)
  # breaks the JRE's postinst, whose update-alternatives links into
  # /usr/share/man/man1.
  printf 'force-unsafe-io\n' >"$r/etc/dpkg/dpkg.cfg.d/tongxin-test-host-unsafe-io"
  rm -f "$r/var/lib/man-db/auto-update"
  # No documentation and no downloaded .debs in the image. The package lists
  # stay, as on any installed host: roles refresh them when older than an hour.
  rm -rf "$r/var/cache/apt/archives/"*.deb "$r/usr/share/doc/"* "$r/usr/share/man/"* \
    "$r/var/log/"*.log
  log "debootstrap done in $((SECONDS - t0)) s; packing $tarball"
  tar -C "$r" --numeric-owner -cf "$tarball.tmp" . || die "packing $tarball failed"
  mv "$tarball.tmp" "$tarball"
  rm -rf "$work"
  trap - EXIT
  log "rootfs built in $((SECONDS - t0)) s ($(du -h "$tarball" | cut -f1))"
}

# ---- 3b. foreign-architecture hosts ----------------------------------------------

# Scenarios whose hosts are another architecture, emulated by qemu-user-static
# through binfmt_misc (issue 17: the ARM 信创 hosts): scenario=debian-arch.
FOREIGN_SCENARIOS=(arm64=arm64)
# Scenarios whose hosts are another Debian release: scenario=suite (issue 17:
# a host whose only Python is older than Tongxin needs).
SUITE_SCENARIOS=(oldpython=bullseye)

ensure_binfmt() {  # ensure_binfmt QEMU_NAME: the kernel runs that architecture's ELF binaries through qemu
  local name=$1 dir=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-$1.conf
  [ -x "/usr/bin/qemu-$name-static" ] && [ -f "$conf" ] || apt_install qemu-user-static
  if ! mountpoint -q "$dir"; then
    as_root "mounting binfmt_misc"
    mount -t binfmt_misc binfmt_misc "$dir" || die "cannot mount binfmt_misc on $dir (needed to emulate $name)"
  fi
  if [ ! -e "$dir/qemu-$name" ]; then
    as_root "registering qemu-$name with binfmt_misc"
    # Debian's entry has the F flag: the kernel opens the interpreter now, so
    # it works inside containers and chroots that do not have it.
    tr -d '\n' <"$conf" >"$dir/register" || die "cannot register qemu-$name with binfmt_misc"
    log "registered qemu-$name with binfmt_misc (left registered: the kernel keeps it until reboot)"
  fi
  grep -qx enabled "$dir/qemu-$name" || die "binfmt_misc has qemu-$name but it is disabled ($dir/qemu-$name)"
}

foreign_image() {  # foreign_image DEB_ARCH: the image name for that architecture's hosts
  echo "${IMAGE%:*}-$1:${IMAGE##*:}"
}
suite_image() {  # suite_image SUITE: the image name for that release's hosts
  local base=${IMAGE%:*}
  echo "${base%debian12}debian$(debian_release "$1"):${IMAGE##*:}"
}

prepare_foreign() {  # prepare_foreign SCENARIO...: binfmt and base image for foreign-architecture (and other-release) scenarios
  local s f arch t0
  for s in "$@"; do
    for f in "${SUITE_SCENARIOS[@]}"; do
      [ "${f%%=*}" = "$s" ] || continue
      t0=$SECONDS
      ensure_image "$(suite_image "${f#*=}")" "$(dpkg --print-architecture)" "${f#*=}"
      log "${f#*=} base image ready ($((SECONDS - t0)) s)"
    done
    for f in "${FOREIGN_SCENARIOS[@]}"; do
      [ "${f%%=*}" = "$s" ] || continue
      arch=${f#*=}
      t0=$SECONDS
      case $arch in arm64) ensure_binfmt aarch64 ;; *) die "no emulator known for $arch" ;; esac
      ensure_image "$(foreign_image "$arch")" "$arch"
      log "$arch base image ready ($((SECONDS - t0)) s)"
    done
  done
}

# ---- what the scenarios share -------------------------------------------------------

ensure_appliance_sources() {
  # The appliance scenario builds a wheel from appliance/; its generated protobuf
  # modules are not committed (make proto writes them).
  if [ ! -f "$ROOT/appliance/src/tongxin/proto/tongxin_pb2.py" ]; then
    log "generating the protobuf modules (make proto)"
    "${NICE[@]}" make -C "$ROOT" proto >/dev/null
  fi
}

prepare_object_store() {  # prepare_object_store SCENARIO...: the MinIO binary the restore scenario runs
  # Built from its Go module once (appliance/scripts/s3server.sh install is a
  # no-op when the cache has it; the integration suite builds the same one),
  # so that the scenario alone works on a fresh machine too.
  local s
  for s in "$@"; do
    if [ "$s" = restore ]; then
      TONGXIN_CACHE=$CACHE TONGXIN_S3_IMPL=minio "${NICE[@]}" bash "$ROOT/appliance/scripts/s3server.sh" install >&2 \
        || die "building MinIO for the restore scenario failed (appliance/scripts/s3server.sh install)"
      return 0
    fi
  done
}

# ---- 4. the offline bundle ---------------------------------------------------------

prepare_bundle() {  # prepare_bundle SCENARIO...: the offline bundle, once, before any scenario
  # The site scenario's prepare step refreshes the bundle in
  # $TONGXIN_CACHE/bundle and the bundle scenario builds a small one from the
  # same download caches. Built here first, one at a time, so that scenarios
  # running in parallel find warm caches instead of racing to fill them, and a
  # fresh machine pays for the downloads once (with the build's progress on
  # the console rather than inside a scenario's log).
  local s wanted=0
  for s in "$@"; do case $s in site|multisite|bundle) wanted=1 ;; esac; done
  [ "$wanted" = 1 ] || return 0
  local t0=$SECONDS
  log "offline bundle for $(uname -m) (appliance/scripts/bundle.sh)"
  # Without the OCI image, as _shared/bundle-prepare.yml builds it (the lab's
  # hosts have Python 3.11; scenario oldpython builds its own).
  BUNDLE_ARCHES=$(uname -m) BUNDLE_COMPONENTS="wheels kafka debs" \
    "${NICE[@]}" bash "$ROOT/appliance/scripts/bundle.sh" >&2 \
    || die "building the offline bundle failed"
  log "bundle ready ($((SECONDS - t0)) s)"
  # The scenarios' prepare step (_shared/bundle-prepare.yml) rebuilds the
  # bundle when run alone; under this run it must not: a rebuild replaces the
  # directory (and its signature) while a parallel scenario installs from it,
  # and that scenario's idempotence run then copies "new" packages.
  export TONGXIN_BUNDLE_PREBUILT=1
}

lint() {
  local rc=0
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  cd "$ROOT"
  log "yamllint"
  yamllint -c tests/molecule/.yamllint roles playbooks inventories tests/molecule || rc=1
  log "ansible-lint (production profile)"
  # --project-dir: the config lives here, the project root is the repository.
  ANSIBLE_ROLES_PATH=$ROOT/roles ansible-lint --project-dir "$ROOT" -c tests/molecule/.ansible-lint \
    roles playbooks inventories tests/molecule || rc=1
  log "variable tables of docs/ansible.md"
  python tests/molecule/role_docs.py --check docs/ansible.md || rc=1
  log "the offline bundle's Debian packages against the roles' package lists"
  python tests/molecule/bundle_packages.py || rc=1
  log "site.yml's tags (--tags certs, --tags <role>)"
  python tests/molecule/tags_check.py || rc=1
  return $rc
}

# Longest first, so that a parallel run does not end with one long scenario
# alone; the rest alphabetically. Measured times in docs/ansible.md.
SCENARIO_ORDER=(multisite site arm64 rolling restore oldpython kafka lb database redis monitoring appliance pki logs lab bundle common preflight)

scenarios_all() {
  local d s
  for s in "${SCENARIO_ORDER[@]}"; do
    [ -f "$HERE/$s/molecule.yml" ] && echo "$s"
  done
  for d in "$HERE"/*/; do
    s=$(basename "$d")
    [ -f "$d/molecule.yml" ] && [[ " ${SCENARIO_ORDER[*]} " != *" $s "* ]] && echo "$s"
  done
  return 0
}

run_one() {  # run_one SCENARIO [LOG]: molecule for one scenario; output to LOG if given
  local s=$1 log=${2:-}
  if [ -n "$log" ]; then
    "${NICE[@]}" molecule --base-config "$HERE/base.yml" "$MOLECULE_COMMAND" -s "$s" >"$log" 2>&1
  else
    "${NICE[@]}" molecule --base-config "$HERE/base.yml" "$MOLECULE_COMMAND" -s "$s"
  fi
}

main() {
  local mode=test jobs=${TONGXIN_MOLECULE_JOBS:-2} beside=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --setup) mode=setup; shift ;;
      --lint) mode=lint; shift ;;
      -j) [ $# -ge 2 ] || die "-j needs a number"; jobs=$2; shift 2 ;;
      -j*) jobs=${1#-j}; shift ;;
      --beside) [ $# -ge 2 ] || die "--beside needs a number"; beside=$2; shift 2 ;;
      -h|--help) sed -n '2,54p' "$0"; exit 0 ;;
      *) break ;;
    esac
  done
  [[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "-j wants a positive number, not '$jobs'"
  if [ -n "$beside" ]; then
    beside_command "$beside" "$jobs" "$@"
    return $?
  fi
  ensure_venv
  if [ "$mode" = lint ]; then lint; exit $?; fi
  ensure_podman
  local t0=$SECONDS
  ensure_image
  log "base image ready ($((SECONDS - t0)) s)"
  ensure_appliance_sources
  local list=("$@")
  [ ${#list[@]} -gt 0 ] || mapfile -t list < <(scenarios_all)
  # Otherwise in the scenario's own slot (one() below): three minutes of
  # debootstrap under emulation would delay every scenario's start.
  if [ "$mode" = setup ]; then prepare_foreign "${list[@]}"; exit 0; fi
  prepare_bundle "${list[@]}"

  local passed=0 failed=0 s results=() t_all=$SECONDS
  export TONGXIN_MOLECULE_IMAGE=$IMAGE TONGXIN_CACHE=$CACHE TONGXIN_MOLECULE_IMAGE_ARM64=$(foreign_image arm64) \
    TONGXIN_MOLECULE_IMAGE_DEBIAN11=$(suite_image bullseye)
  export PATH=$VENV/bin:$PATH
  # The scenarios that keep the controller's secrets vault-encrypted
  # (tongxin_controller_vault: appliance, and the lab inventory when its
  # TONGXIN_CONTROLLER_VAULT is set) run with the lab's vault password unless
  # the caller gives its own.
  export ANSIBLE_VAULT_PASSWORD_FILE=${ANSIBLE_VAULT_PASSWORD_FILE:-$HERE/vault-password.lab}
  if [ ! -t 1 ]; then export NO_COLOR=1 PY_COLORS=0 ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0; fi
  # Molecule looks for molecule/<scenario>/molecule.yml under its working directory.
  cd "$ROOT/tests"
  for s in "${list[@]}"; do
    [ -f "$HERE/$s/molecule.yml" ] || die "no scenario '$s' (tests/molecule/$s/molecule.yml)"
  done
  local logs=$CACHE/molecule-logs
  mkdir -p "$logs"
  # Each scenario in a subshell that writes its time and result to a status
  # file; at most $jobs at a time. Scenarios have their own container names
  # and Molecule state directories, so they do not interfere.
  local status_dir
  status_dir=$(mktemp -d "$logs/.status.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$status_dir'" EXIT
  one() {
    local s=$1 logfile=$2 start=$SECONDS rc=0
    log "scenario $s: molecule $MOLECULE_COMMAND${logfile:+ (output in $logfile)}"
    # In a subshell: its die() ends only the preparation, and the scenario fails.
    # MinIO too, in the restore scenario's own slot: on a fresh machine its Go
    # build took 7.5 minutes (under the suite's load), which before the first
    # scenario delayed all of them.
    if [ -n "$logfile" ]; then
      (prepare_foreign "$s" && prepare_object_store "$s") >"$logfile.prepare" 2>&1 || rc=$?
    else
      (prepare_foreign "$s" && prepare_object_store "$s") || rc=$?
    fi
    if [ "$rc" = 0 ]; then
      run_one "$s" "$logfile" || rc=$?
      # A container that stops answering `podman exec` under the whole suite's
      # load ("UNREACHABLE! ... Connection timed out" in Gathering Facts, or
      # a delegated task's "error occurred on host X: Connection timed out",
      # see lost_a_host) is the test host failing, not the roles: run the
      # scenario once more from its destroy, and say so. Every assertion must
      # still pass on that run; any other failure is final.
      if [ "$rc" != 0 ] && [ -n "$logfile" ] && lost_a_host "$logfile"; then
        mv "$logfile" "$logfile.attempt1"
        log "scenario $s: a host was UNREACHABLE (first run's output in $logfile.attempt1); running it once more"
        rc=0
        run_one "$s" "$logfile" || rc=$?
        echo "$s: ran twice: the first run lost a host (UNREACHABLE), see $logfile.attempt1" >>"$status_dir/.retried"
      fi
    fi
    if [ -n "$logfile" ]; then
      # The preparation's lines first, in the scenario's log.
      cat "$logfile.prepare" "$logfile" 2>/dev/null >"$logfile.tmp"; mv "$logfile.tmp" "$logfile"
      rm -f "$logfile.prepare"
    fi
    echo "$rc $((SECONDS - start))" >"$status_dir/$s"
    if [ -n "$logfile" ]; then
      log "scenario $s: $([ "$rc" = 0 ] && echo passed || echo FAILED) in $((SECONDS - start)) s"
      if [ "$rc" != 0 ]; then
        printf -- '---- last lines of %s ----\n' "$logfile" >&2
        tail -n 60 "$logfile" >&2
      fi
    fi
  }
  local parallel=0
  if [ "$jobs" = 1 ] || [ ${#list[@]} = 1 ]; then
    for s in "${list[@]}"; do one "$s" ""; done
  else
    parallel=1
    for s in "${list[@]}"; do
      if [ -n "${SLOTS_FILE:-}" ]; then
        # --beside: the limit changes when the command ends; look again every few seconds.
        while [ "$(jobs -rp | wc -l)" -ge "$(slots "$jobs")" ]; do sleep 3; done
      else
        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
      fi
      one "$s" "$logs/$s.log" &
    done
    wait
  fi
  local rc secs
  for s in "${list[@]}"; do
    read -r rc secs <"$status_dir/$s" 2>/dev/null || { rc=1; secs='?'; }
    if [ "$rc" = 0 ]; then
      passed=$((passed + 1))
      results+=("$s: passed in $secs s")
    else
      failed=$((failed + 1))
      results+=("$s: FAILED after $secs s")
    fi
  done
  printf '%s\n' "${results[@]}"
  cat "$status_dir/.retried" 2>/dev/null || true
  rm -rf "$status_dir"
  # CI keeps only the end of the output: say there which task failed and how
  # (from the logs of this run: run one at a time, the output went to the console).
  for s in "${list[@]}"; do
    [ "$parallel" = 1 ] && [ -f "$logs/$s.log" ] && grep -q "^$s: FAILED" < <(printf '%s\n' "${results[@]}") || continue
    failure_summary "$s" "$logs/$s.log"
  done
  echo "molecule: $passed passed, $failed failed in $((SECONDS - t_all)) s"
  [ "$failed" = 0 ]
}

slots() {  # slots DEFAULT: how many scenarios may run now (SLOTS_FILE's number, else DEFAULT)
  local n
  n=$(cat "$SLOTS_FILE" 2>/dev/null) || n=""
  if [[ "$n" =~ ^[1-9][0-9]*$ ]]; then echo "$n"; else echo "$1"; fi
}

# beside_command M JOBS [SCENARIO...] -- COMMAND...: COMMAND in the foreground,
# the scenarios (this script without --beside) in the background with at most
# M at a time until COMMAND ends, then JOBS.
beside_command() {
  local during=$1 jobs=$2 scenarios=() cmd=()
  shift 2
  [[ "$during" =~ ^[1-9][0-9]*$ ]] || die "--beside wants a positive number, not '$during'"
  while [ $# -gt 0 ] && [ "$1" != -- ]; do scenarios+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  cmd=("$@")
  [ ${#cmd[@]} -gt 0 ] || die "--beside needs a command after --"
  local logs=$CACHE/molecule-logs
  mkdir -p "$logs"
  local runlog=$logs/run.log slots_file
  slots_file=$(mktemp "$logs/.slots.XXXXXX")
  echo "$during" >"$slots_file"
  SLOTS_FILE=$slots_file "$HERE/run.sh" -j "$jobs" "${scenarios[@]}" >"$runlog" 2>&1 &
  local bg=$!
  # An interrupted run stops the scenarios too (each cleans up its hosts in its
  # own destroy step the next time it runs).
  # shellcheck disable=SC2064
  trap "kill $bg 2>/dev/null; rm -f '$slots_file'" EXIT
  log "scenarios in the background, $during at a time while this runs: ${cmd[*]} (progress in $runlog)"
  local crc=0
  "${cmd[@]}" || crc=$?
  echo "$jobs" >"$slots_file"
  log "the command ended (exit $crc); the scenarios go on, $jobs at a time. Their progress so far:"
  tail -n +1 --pid="$bg" -f "$runlog" || true
  local mrc=0
  wait "$bg" || mrc=$?
  trap - EXIT
  rm -f "$slots_file"
  [ "$crc" = 0 ] || log "the command failed (exit $crc): ${cmd[*]}"
  [ "$crc" = 0 ] && [ "$mrc" = 0 ]
}

# failure_summary SCENARIO LOG: the last failed tasks of a scenario's log
# (an ignored failure earlier on is not the cause), each as its TASK line and
# the first 300 characters of its fatal line, then Molecule's own complaint.
lost_a_host() {  # lost_a_host LOG: did the run fail on an UNREACHABLE host that was not ignored?
  # A task delegated to the host that stopped answering says it differently:
  # "FAILED! => {... "msg": "Task failed: error occurred on host X: Connection
  # timed out."}" (Ansible's words for its connection plugin, never a module's).
  awk '
    pending && !/\.\.\.ignoring/ { hit = 1 }
    { pending = 0 }
    /^fatal: \[[^]]*\]: UNREACHABLE!/ { pending = 1 }
    /^fatal: \[[^]]*\]: FAILED! => .*"msg": "Task failed: error occurred on host [^"]*: Connection timed out\."/ { pending = 1 }
    END { if (pending) hit = 1; exit hit ? 0 : 1 }
  ' "$1"
}

failure_summary() {
  awk -v s="$1" '
    /^TASK \[/ { task = $0 }
    /^(fatal|failed): / || /FAILED! =>/ { f[++n] = s ": " task "\n" s ":   " substr($0, 1, 300) }
    /^(CRITICAL|ERROR) / { c = s ": " substr($0, 1, 300) }
    /^\* \[/ && c ~ /Idempotence/ && k++ < 4 { c = c "\n" s ":   " substr($0, 1, 200) }
    END { for (i = (n > 3 ? n - 2 : 1); i <= n; i++) print f[i]; if (c != "") print c }
  ' "$2"
}

main "$@"; exit $?  # on one line: bash has read it all before running it
