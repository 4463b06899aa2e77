#!/usr/bin/env bash
# Build the offline install bundle (make bundle): one directory, optionally one
# tarball, holding everything an installation needs, with a manifest of every
# file's SHA-256 and SM3 signed with SM2 (docs/operations.md, "Offline install
# bundle").
#
#   appliance/scripts/bundle.sh            (or: make bundle)
#
# Output: $BUNDLE_OUT/tongxin-<version>/ (never inside the git tree)
#   wheels/<arch>/   tongxin + every pinned dependency for CPython 3.11 on
#                    manylinux (glibc <= 2.28) x86_64 / aarch64
#   kafka/           kafka-<v>.tgz built from Maven Central (services.sh
#                    install kafka) and its .sha256; the Prometheus JMX
#                    exporter agent jmx_prometheus_javaagent-<v>.jar and its
#                    .sha256
#   debs/<arch>/     Debian 12 packages of bundle-debs.txt and all their
#                    dependencies (base packages too), as a flat apt repo
#                    (Packages, Packages.gz, Release, InRelease, Release.gpg:
#                    the Release OpenPGP-signed with the bundle's apt key)
#   images/<arch>/   tongxin-<version>.tar: an OCI image (docker-archive) with
#                    Debian 12's CPython 3.11 and OpenSSL 3 and the wheels,
#                    for hosts whose Python is too old (bundle_image.sh)
#   apt-signing.gpg  that key's public half, which role bundle gives apt as
#                    the repository's only signed-by key
#   manifest.json, manifest.sig, signer.pem
# The signer's fingerprint is printed; its public key is written next to the
# signing key as signing.pub.pem: carry that to the controller separately.
#
# Environment:
#   BUNDLE_COMPONENTS    which parts ("wheels kafka debs image"; image needs wheels)
#   BUNDLE_ARCHES        target architectures ("x86_64 aarch64")
#   BUNDLE_PACKAGES      Debian packages instead of bundle-debs.txt
#   BUNDLE_OUT           parent of the bundle directory ($TONGXIN_CACHE/bundle)
#   BUNDLE_SIGNING_KEY   SM2 private key (PEM); generated (0600) if absent
#                        ($TONGXIN_CACHE/bundle-signing/signing.key)
#   BUNDLE_APT_GNUPGHOME the OpenPGP key that signs the apt repositories'
#                        Release (apt accepts nothing else); generated if
#                        absent (signing key's directory/apt-gnupg, 0700)
#   BUNDLE_TAR           1: also write tongxin-<version>.tar next to the directory
#   BUNDLE_GLIBC         newest manylinux glibc the hosts have (2_28: Kylin V10)
#   TONGXIN_CACHE        cache root (~/.cache/tongxin); downloads are kept in
#                        $TONGXIN_CACHE/bundle-cache and reused
#   TONGXIN_DEBIAN_MIRROR  (http://deb.debian.org/debian)
#   TONGXIN_KAFKA_VERSION  (services.sh's default)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APP=$(cd "$HERE/.." && pwd)
ROOT=$(cd "$APP/.." && pwd)
CACHE=${TONGXIN_CACHE:-${HOME:-/root}/.cache/tongxin}
DL=$CACHE/bundle-cache
COMPONENTS=${BUNDLE_COMPONENTS:-wheels kafka debs image}
ARCHES=${BUNDLE_ARCHES:-x86_64 aarch64}
OUT_PARENT=${BUNDLE_OUT:-$CACHE/bundle}
KEY=${BUNDLE_SIGNING_KEY:-$CACHE/bundle-signing/signing.key}
APT_GNUPGHOME=${BUNDLE_APT_GNUPGHOME:-$(dirname "$KEY")/apt-gnupg}
APT_KEY_UID="Tongxin offline bundle apt repository"
GLIBC=${BUNDLE_GLIBC:-2_28}
MIRROR=${TONGXIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PY=$ROOT/.venv/bin/python
TONGXIN=$ROOT/.venv/bin/tongxin
# What every host has before the roles run, besides Debian's required and
# important packages: what Ansible needs and the molecule base image holds
# (tests/molecule/run.sh IMAGE_PACKAGES). Only what the bundled packages depend on is bundled.
BASE=(systemd systemd-sysv dbus python3 python3-apt sudo ca-certificates iproute2 procps)

log() { printf 'bundle: %s\n' "$*" >&2; }
die() { printf 'bundle: error: %s\n' "$*" >&2; exit 1; }

[ -x "$TONGXIN" ] || die "no $TONGXIN: run 'make setup' first"
VERSION=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  "$APP/pyproject.toml")
OUT=$OUT_PARENT/tongxin-$VERSION
case "$(realpath -m "$OUT")/" in
  "$ROOT"/*) die "BUNDLE_OUT=$OUT_PARENT is inside the git tree; choose a directory outside $ROOT" ;;
esac
for c in $COMPONENTS; do
  case $c in wheels|kafka|debs|image) ;; *) die "unknown component '$c' in BUNDLE_COMPONENTS (wheels, kafka, debs, image)" ;; esac
done
for a in $ARCHES; do
  case $a in x86_64|aarch64) ;; *) die "unknown architecture '$a' in BUNDLE_ARCHES (x86_64, aarch64)" ;; esac
done
want() { [[ " $COMPONENTS " == *" $1 "* ]]; }
deb_arch() { case $1 in x86_64) echo amd64 ;; aarch64) echo arm64 ;; esac; }
# pip_target ARCH: PIP_TARGET holds pip's options for the hosts' interpreter,
# CPython 3.11 on ARCH. pip takes each platform tag literally: every manylinux
# level the hosts accept is listed.
pip_target() {
  local v
  PIP_TARGET=()
  for v in $(seq "${GLIBC#2_}" -1 17); do PIP_TARGET+=(--platform "manylinux_2_${v}_$1"); done
  PIP_TARGET+=(--platform "manylinux2014_$1" --python-version 3.11 --implementation cp --abi cp311)
}

mkdir -p "$OUT_PARENT" "$DL"
# Built beside the old one and swapped in at the end: a failed build leaves
# the previous bundle as it was.
NEW=$(mktemp -d "$OUT_PARENT/.tongxin-$VERSION.XXXXXX")
chmod 755 "$NEW"
# This run's scratch space (logs, the tongxin wheel, the gaps found): builds
# may run at once (two Molecule scenarios), only the downloads are shared.
WORK=$(mktemp -d "$DL/.work.XXXXXX")
MISSING=$WORK/missing.tsv
: >"$MISSING"
# gpg starts an agent for the apt key's home (debs); it must not outlive the
# build, failed or not.
stop_gpg_agent() {
  [ -n "$APT_GPG_WORK" ] || return 0
  gpgconf --homedir "$APT_GPG_WORK" --kill gpg-agent 2>/dev/null || true
  rm -rf "$APT_GPG_WORK"
}
APT_GPG_WORK=""
trap 'stop_gpg_agent; rm -rf "$NEW" "$WORK"' EXIT
T0=$SECONDS
log "building tongxin-$VERSION ($COMPONENTS; $ARCHES) into $OUT"

# shellcheck source=bundle_image.sh
. "$HERE/bundle_image.sh"

# ---- wheels ---------------------------------------------------------------------

build_wheels() {
  local src=$WORK/src arch reqs=() reqs_todo=() req n=0 ok
  # tongxin itself, from a copy of the sources (pip writes build/ and
  # egg-info next to them) with the generated modules and web client.
  if [ ! -f "$APP/src/tongxin/proto/tongxin_pb2.py" ] || [ ! -f "$APP/src/tongxin/web/index.html" ]; then
    log "wheels: generating protobuf modules and the web client (make proto web)"
    make -C "$ROOT" -s proto web >&2
  fi
  mkdir -p "$src" "$WORK/wheels"
  cp "$APP/pyproject.toml" "$src/"
  cp -r "$APP/src" "$src/"
  find "$src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  log "wheels: building tongxin $VERSION"
  nice -n 10 "$PY" -m pip wheel -q --no-deps --disable-pip-version-check -w "$WORK/wheels" "$src" >&2
  rm -rf "$src"
  mapfile -t reqs < <("$PY" -c '
import sys, tomllib
for r in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
    print(r.split(";")[0].strip())' "$APP/pyproject.toml")
  for arch in $ARCHES; do
    mkdir -p "$NEW/wheels/$arch"
    pip_target "$arch"
    n=0 ok=0
    log "wheels/$arch: ${#reqs[@]} pinned requirements and their dependencies"
    # All at once first (one resolution); one at a time only if that fails,
    # so that a missing wheel is recorded, not fatal.
    if nice -n 10 "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: \
        "${PIP_TARGET[@]}" \
        -d "$NEW/wheels/$arch" "${reqs[@]}" >"$WORK/pip.log" 2>&1; then
      ok=${#reqs[@]} reqs_todo=()
    else
      reqs_todo=("${reqs[@]}")
    fi
    for req in "${reqs_todo[@]}"; do
      n=$((n + 1))
      log "wheels/$arch: [$n/${#reqs[@]}] $req"
      # Straight into the bundle: pip's own HTTP cache (~/.cache/pip) makes
      # a rebuild download nothing new.
      if ! nice -n 10 "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: \
          "${PIP_TARGET[@]}" \
          -d "$NEW/wheels/$arch" "$req" >"$WORK/pip.log" 2>&1; then
        if ! grep -q -E 'No matching distribution|Could not find a version' "$WORK/pip.log"; then
          cat "$WORK/pip.log" >&2
          die "wheels/$arch: pip download $req failed"
        fi
        printf 'wheels\t%s\t%s\tno CPython 3.11 wheel for manylinux_%s_%s on PyPI\n' \
          "$arch" "$req" "$GLIBC" "$arch" >>"$MISSING"
        log "wheels/$arch: MISSING $req (no wheel for this platform)"
        continue
      fi
      ok=$((ok + 1))
    done
    cp --reflink=auto "$WORK/wheels/tongxin-$VERSION-"*.whl "$NEW/wheels/$arch/"
    log "wheels/$arch: $ok/${#reqs[@]} requirements, $(find "$NEW/wheels/$arch" -name '*.whl' | wc -l) wheels"
  done
}

# ---- kafka ------------------------------------------------------------------------

# Kafka has no built-in Prometheus endpoint (only JMX): the Prometheus
# project's own JMX exporter, run as a java agent inside the broker
# (roles/kafka), serves its metrics to the monitoring hosts. One shaded jar
# from Maven Central, checked against the .sha1 Maven publishes beside it.
# Pinned here; the kafka role's kafka_jmx_exporter_version must match.
JMX_EXPORTER_VERSION=1.0.1
JMX_EXPORTER_URL=https://repo1.maven.org/maven2/io/prometheus/jmx/jmx_prometheus_javaagent/$JMX_EXPORTER_VERSION/jmx_prometheus_javaagent-$JMX_EXPORTER_VERSION.jar

fetch_jmx_exporter() {  # into $DL (once), verified against Maven Central's .sha1
  local jar=$DL/jmx_prometheus_javaagent-$JMX_EXPORTER_VERSION.jar sha1
  [ -s "$jar" ] && [ -s "$jar.sha1" ] && \
    [ "$(sha1sum "$jar" | cut -d' ' -f1)" = "$(cut -c1-40 "$jar.sha1")" ] && return 0
  log "kafka: downloading jmx_prometheus_javaagent-$JMX_EXPORTER_VERSION.jar from Maven Central"
  curl -fsSL --retry 3 -o "$jar.$$.sha1" "$JMX_EXPORTER_URL.sha1" || die "kafka: cannot download $JMX_EXPORTER_URL.sha1"
  curl -fsSL --retry 3 -o "$jar.$$.tmp" "$JMX_EXPORTER_URL" || die "kafka: cannot download $JMX_EXPORTER_URL"
  sha1=$(tr -d ' \r\n' <"$jar.$$.sha1" | cut -c1-40)
  if [ "$(sha1sum "$jar.$$.tmp" | cut -d' ' -f1)" != "$sha1" ]; then
    rm -f "$jar.$$.tmp" "$jar.$$.sha1"
    die "kafka: $JMX_EXPORTER_URL does not match its .sha1 ($sha1)"
  fi
  printf '%s\n' "$sha1" >"$jar.$$.sha1"
  mv "$jar.$$.tmp" "$jar"
  mv "$jar.$$.sha1" "$jar.sha1"
}

build_kafka() {
  # services.sh's default version, read from its KAFKA_VERSION=${TONGXIN_KAFKA_VERSION:-X} line.
  # shellcheck disable=SC2016
  local kv=${TONGXIN_KAFKA_VERSION:-$(sed -n 's/^KAFKA_VERSION=\${TONGXIN_KAFKA_VERSION:-\(.*\)}$/\1/p' "$APP/scripts/services.sh")}
  local home=$CACHE/kafka-$kv tgz=$DL/kafka-$kv.tgz
  # services.sh resolves the jars once into the cache (and waits for a
  # running `services.sh start`): call it only when they are not there yet.
  if [ ! -f "$home/.complete" ]; then
    log "kafka: resolving Kafka $kv from Maven Central (services.sh install kafka)"
    "$APP/scripts/services.sh" install kafka
  fi
  [ -d "$home/libs" ] || die "kafka: $home/libs missing after services.sh install kafka"
  if [ ! -s "$tgz" ] || [ -n "$(find "$home/libs" "$home/log4j2.properties" -newer "$tgz" -print -quit)" ]; then
    log "kafka: packing kafka-$kv.tgz ($(find "$home/libs" -name '*.jar' | wc -l) jars)"
    # Reproducible (sorted, fixed times and owners): the same jars give the same checksum.
    tar -C "$CACHE" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
      -cf - "kafka-$kv/libs" "kafka-$kv/log4j2.properties" | gzip -n >"$tgz.$$.tmp"
    mv "$tgz.$$.tmp" "$tgz"
  fi
  mkdir -p "$NEW/kafka"
  cp --reflink=auto "$tgz" "$NEW/kafka/"
  (cd "$NEW/kafka" && sha256sum "kafka-$kv.tgz" >"kafka-$kv.tgz.sha256")
  log "kafka: kafka-$kv.tgz ($(du -h "$tgz" | cut -f1))"
  fetch_jmx_exporter
  local agent=jmx_prometheus_javaagent-$JMX_EXPORTER_VERSION.jar
  cp --reflink=auto "$DL/$agent" "$NEW/kafka/"
  (cd "$NEW/kafka" && sha256sum "$agent" >"$agent.sha256")
  log "kafka: $agent ($(du -h "$DL/$agent" | cut -f1))"
}

# ---- debs -------------------------------------------------------------------------

apt_opts() {  # apt_opts STATE_DIR DEB_ARCH: a private apt for another architecture
  local s=$1 da=$2
  APT=(-o "Dir::Etc::SourceList=$s/sources.list" -o "Dir::Etc::SourceParts=$s/sources.list.d"
       -o "Dir::Etc::Preferences=$s/preferences" -o "Dir::Etc::PreferencesParts=$s/preferences.d"
       -o "Dir::State=$s/state" -o "Dir::State::status=$s/status" -o "Dir::Cache=$s/cache"
       -o "APT::Architecture=$da" -o "APT::Architectures=$da" -o "APT::Install-Recommends=false"
       -o "Acquire::Languages=none" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")
}

# apt_state ARCH WHAT: a private apt for ARCH's Debian packages (APT holds its
# options), its package lists fresh, nothing marked installed. Holds the
# architecture's lock on fd 9 until the caller closes it: builds may run at
# once (two Molecule scenarios) and share the apt state and the download cache.
apt_state() {
  local arch=$1 what=$2 da s keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  da=$(deb_arch "$arch")
  s=$DL/apt/$da
  [ -f "$keyring" ] || die "$what: $keyring missing (apt-get install debian-archive-keyring)"
  mkdir -p "$s/sources.list.d" "$s/preferences.d" "$s/state/lists/partial" "$s/cache/archives/partial" \
    "$DL/debs/$arch"
  exec 9>"$s/.lock"
  flock 9
  : >"$s/status"  # nothing installed: every closure is computed in full
  local mirror_sec=${MIRROR%/debian}/debian-security
  cat >"$s/sources.list" <<EOF
deb [arch=$da signed-by=$keyring] $MIRROR $SUITE main
deb [arch=$da signed-by=$keyring] $MIRROR $SUITE-updates main
deb [arch=$da signed-by=$keyring] $mirror_sec $SUITE-security main
EOF
  apt_opts "$s" "$da"
  # Package lists younger than an hour are reused (as the roles' cache_valid_time).
  # Their age is the stamp's: apt gives the lists the archive's own dates
  # (and stores them compressed, *_Packages.lz4).
  if [ -n "$(find "$s/sources.stamp" -mmin -60 -print 2>/dev/null)" ] &&
      [ -n "$(find "$s/state/lists" -maxdepth 1 -name '*_Packages*' -print -quit)" ] &&
      [ "$(cat "$s/sources.stamp" 2>/dev/null)" = "$(sha256sum <"$s/sources.list")" ]; then
    log "$what/$arch: package lists are recent, not updating"
  else
    log "$what/$arch: apt-get update ($da)"
    nice -n 10 apt-get "${APT[@]}" -qq update >&2 || die "$what/$arch: apt-get update failed"
    sha256sum <"$s/sources.list" >"$s/sources.stamp"
  fi
}

deb_packages() {
  if [ -n "${BUNDLE_PACKAGES:-}" ]; then
    local list
    read -r -a list <<<"$BUNDLE_PACKAGES"
    printf '%s\n' "${list[@]}"
  else
    sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$HERE/bundle-debs.txt" | awk '{print $1}'
  fi
}

# apt verifies a repository's Release with OpenPGP only (the SM2 manifest is
# checked on the controller; this signature is checked again by apt on every
# host, at every install). One ed25519 key, made once beside the SM2 key,
# without a passphrase like it: the build runs unattended.
apt_signing_key() {
  # gpg-agent's socket lives in the key's home, and a Unix socket's path has
  # at most 107 bytes: a deep cache directory (a Molecule scenario's, a
  # throwaway HOME) makes the agent fail to start. gpg works in a short copy
  # under /tmp; only the key files go back.
  APT_GPG_WORK=$(mktemp -d /tmp/tx-gpg.XXXXXX)
  chmod 700 "$APT_GPG_WORK"
  local f
  for f in pubring.kbx trustdb.gpg private-keys-v1.d; do
    if [ -e "$APT_GNUPGHOME/$f" ]; then cp -a "$APT_GNUPGHOME/$f" "$APT_GPG_WORK/"; fi
  done
  local gpg=(gpg --homedir "$APT_GPG_WORK" --batch --quiet)
  if ! "${gpg[@]}" --list-secret-keys "$APT_KEY_UID" >/dev/null 2>&1; then
    log "debs: making the apt repository's OpenPGP key in $APT_GNUPGHOME"
    "${gpg[@]}" --passphrase '' --quick-generate-key "$APT_KEY_UID" ed25519 sign never >&2 ||
      die "debs: gpg could not make the apt signing key"
    mkdir -p "$APT_GNUPGHOME"
    chmod 700 "$APT_GNUPGHOME"
    for f in pubring.kbx trustdb.gpg private-keys-v1.d; do
      if [ -e "$APT_GPG_WORK/$f" ]; then cp -a "$APT_GPG_WORK/$f" "$APT_GNUPGHOME/"; fi
    done
  fi
  "${gpg[@]}" --export "$APT_KEY_UID" >"$NEW/apt-signing.gpg"
  [ -s "$NEW/apt-signing.gpg" ] || die "debs: no public apt key exported from $APT_GNUPGHOME"
}

apt_sign_release() {  # apt_sign_release DIR: InRelease and Release.gpg for DIR/Release
  local gpg=(gpg --homedir "$APT_GPG_WORK" --batch --quiet --yes --local-user "$APT_KEY_UID" --digest-algo SHA512)
  "${gpg[@]}" --clearsign -o "$1/InRelease" "$1/Release" &&
    "${gpg[@]}" --armor --detach-sign -o "$1/Release.gpg" "$1/Release" ||
    die "debs: signing $1/Release failed"
}

build_debs() {
  if ! command -v dpkg-scanpackages >/dev/null || ! command -v apt-ftparchive >/dev/null || ! command -v gpg >/dev/null; then
    [ "$(id -u)" = 0 ] || die "debs: dpkg-scanpackages, apt-ftparchive and gpg are needed (apt-get install dpkg-dev apt-utils gpg)"
    log "debs: installing dpkg-dev apt-utils gpg"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dpkg-dev apt-utils gpg >/dev/null
  fi
  apt_signing_key
  local arch da s pkgs base
  mapfile -t pkgs < <(deb_packages)
  [ ${#pkgs[@]} -gt 0 ] || die "debs: no packages (bundle-debs.txt / BUNDLE_PACKAGES)"
  for arch in $ARCHES; do
    da=$(deb_arch "$arch")
    s=$DL/apt/$da
    mkdir -p "$NEW/debs/$arch"
    apt_state "$arch" debs
    local files=$NEW/.files-$arch
    : >"$files"
    # The base system: Debian's required + important packages and BASE.
    mapfile -t base < <({ apt-cache "${APT[@]}" dumpavail |
      awk '/^Package:/{p=$2} /^Priority: (required|important)$/{print p}'; printf '%s\n' "${BASE[@]}"; } | sort -u)
    local inst_base closure need srcs
    inst_base=$(apt-get "${APT[@]}" -s -qq install "${base[@]}" 2>&1 | awk '/^Inst /{print $2"="substr($3,2)}' | sort -u) ||
      die "debs/$arch: cannot resolve the base system"
    # Every package the list needs, base packages included: a host is installed
    # from a point release and may lack the updates since, while the list is
    # resolved against today's archive (python3.11-venv 3.11.2-6+deb12u9 wants
    # python3.11 of exactly that version, and the host has +deb12u8). Without
    # them in the bundle apt on the host reports "held broken packages".
    if ! closure=$(apt-get "${APT[@]}" -s -qq install "${pkgs[@]}" 2>"$WORK/apt.err"); then
      cat "$WORK/apt.err" >&2
      die "debs/$arch: cannot resolve ${pkgs[*]}"
    fi
    closure=$(awk '/^Inst /{print $2"="substr($3,2)}' <<<"$closure" | sort -u)
    # And the base packages built from the same sources: they depend on each
    # other at exact versions, so upgrading one (libpython3.11-stdlib) needs
    # its siblings (libpython3.11) too.
    srcs=$(apt-cache "${APT[@]}" dumpavail | awk '
      /^Package:/ {p = $2; src = $2}
      /^Source:/  {src = $2}
      /^$/        {if (p != "") print p, src; p = ""}' | sort -u)
    mapfile -t need < <({
      echo "$closure"
      awk -v cl="$(cut -d= -f1 <<<"$closure" | tr '\n' ' ')" -v base="$inst_base" '
        BEGIN { n = split(cl, c, " "); for (i = 1; i <= n; i++) inclosure[c[i]] = 1
                m = split(base, b, "\n"); for (i = 1; i <= m; i++) { split(b[i], kv, "="); inbase[kv[1]] = b[i] } }
        { src[$1] = $2; if (inclosure[$1]) want[$2] = 1 }
        END { for (p in inbase) if (want[src[p]] && !inclosure[p]) print inbase[p] }' <<<"$srcs"
    } | sort -u)
    log "debs/$arch: ${#pkgs[@]} packages need ${#need[@]} .debs (with the base packages they depend on)"
    # Download what the cache lacks; apt checks each file against the signed index.
    local uris todo=() cached=0 file size
    # From an empty directory: apt-get download leaves out what the current one holds.
    uris=$(cd "$(mktemp -d "$NEW/.uris.XXXXXX")" && apt-get "${APT[@]}" --print-uris -qq download "${need[@]}")
    rm -rf "$NEW"/.uris.*
    while read -r _ file size _; do
      [ -n "$file" ] || continue
      file=${file//\'/}
      if [ -f "$DL/debs/$arch/$file" ] && [ "$(stat -c %s "$DL/debs/$arch/$file")" = "$size" ]; then
        cached=$((cached + 1))
      else
        todo+=("$(sed -n "s/^\([^_]*\)_.*/\1/p" <<<"$file")")
      fi
      echo "$file" >>"$files"
    done <<<"$uris"
    if [ ${#todo[@]} -gt 0 ]; then
      log "debs/$arch: $cached cached, downloading ${#todo[@]}"
      # A loop, not `printf | grep -m1`: grep leaving early kills printf with
      # SIGPIPE, and under pipefail that ended the whole build (exit 141) on a
      # cold cache with many packages to fetch.
      local want_ver=() p n
      for p in "${todo[@]}"; do
        for n in "${need[@]}"; do
          if [[ $n == "$p="* ]]; then want_ver+=("$n"); break; fi
        done
      done
      (cd "$DL/debs/$arch" && nice -n 10 apt-get "${APT[@]}" -q download "${want_ver[@]}" >&2) ||
        die "debs/$arch: download failed"
    else
      log "debs/$arch: all ${cached} cached"
    fi
    while read -r file; do
      cp --reflink=auto "$DL/debs/$arch/$file" "$NEW/debs/$arch/"
    done <"$files"
    rm -f "$files"
    log "debs/$arch: indexing the flat repository"
    (cd "$NEW/debs/$arch" &&
      dpkg-scanpackages --multiversion . /dev/null 2>/dev/null >Packages &&
      gzip -9n <Packages >Packages.gz &&
      apt-ftparchive -o "APT::FTPArchive::Release::Origin=Tongxin bundle" \
        -o "APT::FTPArchive::Release::Suite=tongxin-$VERSION" release . >Release.tmp && mv Release.tmp Release)
    apt_sign_release "$NEW/debs/$arch"
    log "debs/$arch: $(find "$NEW/debs/$arch" -name '*.deb' | wc -l) packages ($(du -sh "$NEW/debs/$arch" | cut -f1))"
    exec 9>&-
  done
}

want wheels && build_wheels
want kafka && build_kafka
want debs && build_debs
want image && build_image

# ---- manifest, signature, swap -----------------------------------------------------------

log "manifest: SHA-256 and SM3 of $(find "$NEW" -type f | wc -l) files, SM2-signed with $KEY"
FP=$("$TONGXIN" bundle manifest "$NEW" --key "$KEY" --version "$VERSION" --missing-file "$MISSING")
"$TONGXIN" bundle key --key "$KEY" --public-out "${KEY%.key}.pub.pem" >/dev/null 2>&1
rm -rf "$OUT"
mv "$NEW" "$OUT"
if [ "${BUNDLE_TAR:-0}" = 1 ]; then
  log "tar: $OUT.tar"
  tar -C "$OUT_PARENT" -cf "$OUT.tar.tmp" "tongxin-$VERSION" && mv "$OUT.tar.tmp" "$OUT.tar"
fi
log "done in $((SECONDS - T0)) s: $OUT ($(du -sh "$OUT" | cut -f1))"
log "signer fingerprint (SM3 of the SM2 public key): $FP"
log "trusted public key to carry separately: ${KEY%.key}.pub.pem"
echo "$OUT"
