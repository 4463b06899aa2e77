#!/usr/bin/env bash
# A real S3-compatible server on loopback for the S3 blob store's tests
# (appliance/tests/integration/test_files.py) and for developers.
#
#   s3server.sh {install|start|stop|status|env}
#
#   install  build the server from its Go module into the cache (once)
#   start    install if needed, start it (idempotent: a running server is
#            left alone) and wait until it answers
#   stop     stop it by the PID file this script wrote (never by name)
#   status   print up/down; exit 1 if down
#   env      print `export` lines: TONGXIN_S3_ENDPOINT, TONGXIN_S3_ACCESS_KEY,
#            TONGXIN_S3_SECRET_KEY, TONGXIN_S3_REGION
#
# What runs (TONGXIN_S3_IMPL):
#   minio      (default) MinIO, built with `go install
#              github.com/minio/minio@VERSION` from the Go module proxy: the
#              S3 server most on-premises sites run, and strict like AWS
#              (e.g. it refuses multipart parts under 5 MiB). A cold build
#              takes ~5 CPU-minutes and ~150 MB; later starts ~2 s.
#   versitygw  Versity S3 Gateway with its posix backend, built the same way
#              from github.com/versity/versitygw: half the build cost; a
#              fallback should MinIO's module stop building.
# Either is built with the Go at /usr/local/go/bin or on PATH, cached, bound
# to 127.0.0.1:$TONGXIN_S3_PORT with its data in $TONGXIN_S3_DIR/<impl>-data.
# Buckets are made by the tests (CreateBucket), not here.
#
# Environment:
#   TONGXIN_S3_IMPL       minio or versitygw (minio)
#   TONGXIN_S3_DIR        state: data, log, PID file (/tmp/tongxin-s3)
#   TONGXIN_S3_PORT       S3 API port (39517; MinIO's console, unused, gets +1)
#   TONGXIN_CACHE         built binaries ($HOME/.cache/tongxin)
#   TONGXIN_MINIO_VERSION, TONGXIN_VERSITYGW_VERSION  Go module versions (pinned below)
set -euo pipefail

STATE=${TONGXIN_S3_DIR:-/tmp/tongxin-s3}
CACHE=${TONGXIN_CACHE:-${HOME:-/root}/.cache/tongxin}
PORT=${TONGXIN_S3_PORT:-39517}
IMPL=${TONGXIN_S3_IMPL:-minio}
case $IMPL in
  minio)
    VERSION=${TONGXIN_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}
    MODULE=github.com/minio/minio ;;
  versitygw)
    VERSION=${TONGXIN_VERSITYGW_VERSION:-v1.8.0}
    MODULE=github.com/versity/versitygw/cmd/versitygw ;;
  *) printf 's3server: error: TONGXIN_S3_IMPL must be minio or versitygw\n' >&2; exit 1 ;;
esac
BIN_DIR=$CACHE/$IMPL-$VERSION
BIN=$BIN_DIR/$IMPL
ACCESS_KEY=tongxin-test
SECRET_KEY=tongxin-test-secret-key
REGION=us-east-1
START_TIMEOUT=${TONGXIN_START_TIMEOUT:-120}
PIDFILE=$STATE/$IMPL.pid
LOGFILE=$STATE/$IMPL.log

log() { printf 's3server: %s\n' "$*" >&2; }
die() { printf 's3server: error: %s\n' "$*" >&2; exit 1; }

pid_alive() {
  local pid
  [ -s "$PIDFILE" ] || return 1
  pid=$(head -n1 "$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null
}

answers() {  # MinIO's liveness endpoint says 200; versitygw answers at all
  local reply
  reply=$(
    exec 2>/dev/null
    exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 1
    printf 'GET /minio/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
    timeout 5 head -n1 <&3
  ) || return 1
  if [ "$IMPL" = minio ]; then [[ $reply == "HTTP/1.1 200"* ]]; else [[ $reply == "HTTP/1.1 "* ]]; fi
}

go_bin() {
  if command -v go >/dev/null; then command -v go
  elif [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go
  else return 1
  fi
}

install() {
  [ -x "$BIN" ] && return 0
  local go tmp started
  go=$(go_bin) || die "no Go toolchain (looked on PATH and in /usr/local/go/bin)"
  mkdir -p "$CACHE"
  # One build at a time: `make test` runs `make engines` while the restore
  # scenario's preparation asks for the same binary; the second waits and
  # finds it built instead of spending minutes of CPU on a second build.
  exec 7>"$CACHE/.$IMPL-build.lock"
  flock 7
  if [ -x "$BIN" ]; then exec 7>&-; return 0; fi
  tmp=$(mktemp -d "$CACHE/$IMPL-build.XXXXXX")
  started=$SECONDS
  log "building $MODULE@$VERSION from the Go module proxy (minutes, once)"
  if ! GOBIN=$tmp GOFLAGS=-buildvcs=false "$go" install "$MODULE@$VERSION" >"$tmp/build.log" 2>&1; then
    tail -n 30 "$tmp/build.log" >&2
    rm -rf "$tmp"
    die "go install $MODULE@$VERSION failed"
  fi
  mkdir -p "$BIN_DIR"
  mv "$tmp/$IMPL" "$BIN.tmp.$$"
  mv "$BIN.tmp.$$" "$BIN"  # atomic: a concurrent start sees the whole binary or none
  rm -rf "$tmp"
  exec 7>&-
  log "built $BIN in $((SECONDS - started)) s"
}

launch() {
  if [ "$IMPL" = minio ]; then
    MINIO_ROOT_USER=$ACCESS_KEY MINIO_ROOT_PASSWORD=$SECRET_KEY MINIO_REGION=$REGION \
    MINIO_BROWSER=off MINIO_UPDATE=off MINIO_CI_CD=1 \
      exec setsid "$BIN" server --quiet --address "127.0.0.1:$PORT" \
        --console-address "127.0.0.1:$((PORT + 1))" "$STATE/$IMPL-data"
  else
    ROOT_ACCESS_KEY=$ACCESS_KEY ROOT_SECRET_KEY=$SECRET_KEY \
      exec setsid "$BIN" --port "127.0.0.1:$PORT" --region "$REGION" posix "$STATE/$IMPL-data"
  fi
}

start() {
  local other
  for other in minio versitygw; do
    if [ "$other" != "$IMPL" ] && [ -s "$STATE/$other.pid" ] && kill -0 "$(head -n1 "$STATE/$other.pid")" 2>/dev/null; then
      die "$other is running from $STATE; stop it first (TONGXIN_S3_IMPL=$other $0 stop)"
    fi
  done
  install
  mkdir -p "$STATE/$IMPL-data"
  if pid_alive; then
    if answers; then
      log "already running (pid $(head -n1 "$PIDFILE"), 127.0.0.1:$PORT)"
      return 0
    fi
  elif answers; then
    die "port $PORT answers but not for a server this script started; set TONGXIN_S3_PORT"
  else
    rm -f "$PIDFILE"
    # Its own session: a Ctrl-C to the test run does not reach it.
    (launch) </dev/null >"$LOGFILE" 2>&1 &
    echo $! >"$PIDFILE"
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until answers; do
    pid_alive || { tail -n 20 "$LOGFILE" >&2; die "$IMPL exited; see $LOGFILE"; }
    ((SECONDS < deadline)) || die "$IMPL did not answer within ${START_TIMEOUT}s; see $LOGFILE"
    sleep 0.1
  done
  log "$IMPL up on 127.0.0.1:$PORT (data in $STATE/$IMPL-data)"
}

stop() {
  local pid i
  if ! pid_alive; then
    rm -f "$PIDFILE"
    return 0
  fi
  pid=$(head -n1 "$PIDFILE")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$IMPL (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  log "stopped"
}

status() {
  if pid_alive && answers; then
    echo "s3 up: $IMPL on 127.0.0.1:$PORT (pid $(head -n1 "$PIDFILE"))"
  else
    echo "s3 down"
    return 1
  fi
}

env_lines() {
  echo "export TONGXIN_S3_ENDPOINT=http://127.0.0.1:$PORT"
  echo "export TONGXIN_S3_ACCESS_KEY=$ACCESS_KEY"
  echo "export TONGXIN_S3_SECRET_KEY=$SECRET_KEY"
  echo "export TONGXIN_S3_REGION=$REGION"
}

case ${1:-} in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) env_lines ;;
  *) die "usage: $0 {install|start|stop|status|env}" ;;
esac
