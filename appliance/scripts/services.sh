#!/usr/bin/env bash
# The real engines behind Tongxin's production adapters, on loopback, for
# tests, CI and developers alike (one script, so they all start the same way).
#
#   services.sh {install|start|stop|status|env} [redis|kafka|mariadb|tidb|all]...
#   (no name means all; several names act on each in turn)
#
#   install  fetch or build what a service needs (Debian packages, Kafka's jars
#            from Maven Central, tidb-server built from its Go module, into the
#            cache); start does this by itself
#   start    start it (idempotent: a running service is left alone) and wait
#            until it answers
#   stop     stop it by the PID files this script wrote (never by name)
#   status   print up/down per service; exit 1 if any is down
#   env      print `export` lines for the adapters and tests
#
# What runs (all bound to 127.0.0.1):
#   redis    Debian's redis-server: a 6-process Redis Cluster (3 primaries +
#            3 replicas) on ports 7000-7005
#   kafka    Apache Kafka (kafka_2.13 and its runtime dependencies from Maven
#            Central) on the machine's Java 17, KRaft mode, one combined
#            broker+controller node on 9092 (controller 9093)
#   mariadb  Debian's mariadb-server as a private instance (own datadir,
#            socket and port 3307, so a system MariaDB on 3306 is untouched),
#            database `tongxin`, user `tongxin`
#   tidb     TiDB's SQL layer (`tidb-server`) with its embedded `unistore`
#            storage, built once from TiDB's Go module through the Go module
#            proxy (the tools module in scripts/tidb/; the one pseudo-version
#            the proxy serves, TiDB's master of March 2022, about v6.0), on
#            port 4000 (status 10080), database `tongxin`, user `tongxin`
#
# Environment:
#   TONGXIN_SERVICES_DIR   state: data, logs, PID files (/tmp/tongxin-services)
#   TONGXIN_CACHE          downloaded artifacts ($HOME/.cache/tongxin)
#   TONGXIN_KAFKA_VERSION  Kafka release (4.3.1)
#   TONGXIN_MARIADB_PORT   TCP port of the private MariaDB (3307)
#   TONGXIN_TIDB_PORT      TiDB's MySQL port; its status port is this + 6080 (4000)
#   TONGXIN_REDIS_BASE_PORT first of the six Redis ports (7000); each node's cluster bus
#                          takes its port + 10000, so a second set of engines beside the
#                          default one must keep clear of 17000-17005 too (the default's bus)
#   TONGXIN_KAFKA_PORT     Kafka's listener; the controller takes the next port (9092)
#
# Kafka's cache directory also holds connect-mirror and connect-runtime, so
# MirrorMaker 2 runs from the same jars:
#   java -cp "$TONGXIN_KAFKA_HOME/libs/*" org.apache.kafka.connect.mirror.MirrorMaker mm2.properties
set -euo pipefail

STATE=${TONGXIN_SERVICES_DIR:-/tmp/tongxin-services}
CACHE=${TONGXIN_CACHE:-${HOME:-/root}/.cache/tongxin}
# 4.3.1: the newest release whose broker, tools and connect-mirror (MirrorMaker 2)
# all resolve from the registry here (connect-mirror 4.4.0 does not); Kafka 4.x
# brokers are built for Java 17.
KAFKA_VERSION=${TONGXIN_KAFKA_VERSION:-4.3.1}
KAFKA_HOME=$CACHE/kafka-$KAFKA_VERSION
KAFKA_PORT=${TONGXIN_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
REDIS_BASE_PORT=${TONGXIN_REDIS_BASE_PORT:-7000}
REDIS_PORTS=()
for ((i = 0; i < 6; i++)); do REDIS_PORTS+=($((REDIS_BASE_PORT + i))); done
MARIADB_PORT=${TONGXIN_MARIADB_PORT:-3307}
# The one version of TiDB's module the Go module proxy serves; scripts/tidb/go.mod
# requires it (install refuses to build when the two disagree).
TIDB_MODULE=github.com/pingcap/tidb
TIDB_MODULE_VERSION=v1.1.0-beta.0.20220309003348-b9bd5a7d7e4d
TIDB_TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tidb
TIDB_HOME=$CACHE/tidb-$TIDB_MODULE_VERSION
TIDB_BIN=$TIDB_HOME/tidb-server
TIDB_PORT=${TONGXIN_TIDB_PORT:-4000}
TIDB_STATUS_PORT=$((TIDB_PORT + 6080))
MYSQL_DB=tongxin
MYSQL_USER=tongxin
MYSQL_PASSWORD=tongxin-test-pw
START_TIMEOUT=${TONGXIN_START_TIMEOUT:-120}

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

# ---- helpers ------------------------------------------------------------------

pid_alive() {  # pid_alive FILE COMM: the process named in FILE runs and is COMM
  local pid comm
  [ -s "$1" ] || return 1
  pid=$(head -n1 "$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # A daemon killed with SIGKILL (the failover tests do) is a zombie until
  # PID 1 reaps it, seconds here: kill -0 still succeeds and its comm is
  # unchanged, and taking it for running left the node down while start
  # waited 120 s for an answer.
  case $(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$pid/status" 2>/dev/null) in
    Z|X) return 1 ;;
  esac
  # A PID file that outlived its process (a reboot) may name someone else now.
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || echo "$2")
  [ "$comm" = "$2" ]
}

stop_pidfile() {  # stop_pidfile FILE COMM NAME: TERM, wait up to 60 s, then KILL
  local file=$1 comm=$2 name=$3 pid i
  if ! pid_alive "$file" "$comm"; then
    rm -f "$file"
    return 0
  fi
  pid=$(head -n1 "$file")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) ignored SIGTERM for 60 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$file"
}

port_open() {  # port_open PORT
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_for() {  # wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds
  local what=$1 deadline=$((SECONDS + START_TIMEOUT))
  shift
  until "$@"; do
    if ((SECONDS >= deadline)); then
      log "gave up waiting for $what after ${START_TIMEOUT}s"
      return 1
    fi
    sleep 0.2
  done
}

apt_install() {  # apt_install PKG...: without starting Debian's own services
  local policy=/usr/sbin/policy-rc.d added=0
  [ "$(id -u)" = 0 ] || die "installing $* needs root (apt-get install -y $*)"
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  (
    exec 8>"$STATE/.lock-apt"  # two services installing at once would race for dpkg's lock
    flock 8
    if ! apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    fi
  )
  if [ "$added" = 1 ]; then rm -f "$policy"; fi
}

# ---- Redis Cluster ------------------------------------------------------------

redis_install() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  log "installing redis-server"
  apt_install redis-server redis-tools
}

redis_cluster_ok() {
  local p
  for p in "${REDIS_PORTS[@]}"; do
    redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

redis_replicas_synced() {
  # A replica whose link is not up yet cannot take over: a primary killed
  # before its replica synced leaves the slots uncovered (the failover tests).
  local p info
  for p in "${REDIS_PORTS[@]}"; do
    info=$(redis-cli -p "$p" info replication 2>/dev/null) || return 1
    case $info in
      *role:slave*) grep -q '^master_link_status:up' <<<"$info" || return 1 ;;
    esac
  done
}

redis_all_answer() {
  local p
  for p in "${REDIS_PORTS[@]}"; do
    [ "$(redis-cli -p "$p" ping 2>/dev/null)" = PONG ] || return 1
  done
}

redis_start_node() {
  local p=$1 dir=$STATE/redis/$1
  mkdir -p "$dir"
  pid_alive "$dir/redis.pid" redis-server && return 0
  cat >"$dir/redis.conf" <<EOF
port $p
bind 127.0.0.1
protected-mode no
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
dir $dir
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 5000
appendonly yes
appendfsync everysec
save ""
EOF
  redis-server "$dir/redis.conf" 9>&-  # the daemon must not keep the lock fd
}

redis_start() {
  redis_install
  local p fresh=1
  for p in "${REDIS_PORTS[@]}"; do
    [ -s "$STATE/redis/$p/nodes.conf" ] && fresh=0
    redis_start_node "$p"
  done
  wait_for "redis nodes" redis_all_answer || die "redis nodes did not answer; see $STATE/redis/*/redis.log"
  if redis_cluster_ok; then
    wait_for "redis replicas in sync" redis_replicas_synced \
      || die "redis replicas did not sync; see $STATE/redis/*/redis.log"
    log "redis cluster up (127.0.0.1:${REDIS_PORTS[0]}-${REDIS_PORTS[5]})"
    return 0
  fi
  local known
  known=$(redis-cli -p "${REDIS_PORTS[0]}" cluster info | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p')
  if [ "$fresh" = 1 ] || [ "${known:-1}" = 1 ]; then
    # A fresh set of nodes (or one that lost its config): form the cluster.
    local p2 addrs=()
    for p2 in "${REDIS_PORTS[@]}"; do
      redis-cli -p "$p2" cluster reset hard >/dev/null 2>&1 || true
      addrs+=("127.0.0.1:$p2")
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$STATE/redis/create.log" 2>&1 \
      || die "redis-cli --cluster create failed; see $STATE/redis/create.log"
  fi
  # Restarted nodes re-form the cluster from their nodes.conf on their own.
  wait_for "redis cluster_state:ok" redis_cluster_ok \
    || die "redis cluster did not reach cluster_state:ok; see $STATE/redis/*/redis.log"
  wait_for "redis replicas in sync" redis_replicas_synced \
    || die "redis replicas did not sync; see $STATE/redis/*/redis.log"
  log "redis cluster up (127.0.0.1:${REDIS_PORTS[0]}-${REDIS_PORTS[5]})"
}

redis_stop() {
  local p
  for p in "${REDIS_PORTS[@]}"; do
    stop_pidfile "$STATE/redis/$p/redis.pid" redis-server "redis:$p"
  done
}

redis_status() {
  local p down=0
  for p in "${REDIS_PORTS[@]}"; do
    pid_alive "$STATE/redis/$p/redis.pid" redis-server || down=1
  done
  if [ "$down" = 0 ] && redis_cluster_ok; then
    echo "redis: up (cluster_state:ok, 127.0.0.1:${REDIS_PORTS[0]}-${REDIS_PORTS[5]})"
  else
    echo "redis: down"
    return 1
  fi
}

# ---- Kafka (KRaft) ------------------------------------------------------------

kafka_install() {
  [ -f "$KAFKA_HOME/.complete" ] && return 0
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  log "resolving Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME"
  mkdir -p "$KAFKA_HOME"
  local work
  work=$(mktemp -d "$KAFKA_HOME/.resolve.XXXXXX")
  cat >"$work/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tongxin.services</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- the broker (kafka.Kafka) and the storage formatter (kafka.tools.StorageTool) -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- admin tools (topics, consumer groups) as in the release's bin/ -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- MirrorMaker 2 (org.apache.kafka.connect.mirror.MirrorMaker) for the DR replication -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-mirror</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- logging backend: the release ships log4j2 behind slf4j 1.7 -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
EOF
  if ! (cd "$work" && mvn -B -q dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$work/libs" >"$work/mvn.log" 2>&1); then
    tail -n 30 "$work/mvn.log" >&2
    die "could not resolve Kafka $KAFKA_VERSION with Maven (log: $work/mvn.log)"
  fi
  rm -rf "$KAFKA_HOME/libs"
  mv "$work/libs" "$KAFKA_HOME/libs"
  cp "$work/pom.xml" "$KAFKA_HOME/pom.xml"
  rm -rf "$work"
  cat >"$KAFKA_HOME/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = info
logger.apache.name = org.apache.kafka
logger.apache.level = info
EOF
  touch "$KAFKA_HOME/.complete"
  log "Kafka $KAFKA_VERSION: $(find "$KAFKA_HOME/libs" -name '*.jar' | wc -l) jars cached"
}

kafka_java() {
  java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_HOME/log4j2.properties" \
    -cp "$KAFKA_HOME/libs/*" "$@"
}

kafka_ready() {
  port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$STATE/kafka/kafka.log" 2>/dev/null
}

kafka_start() {
  local dir=$STATE/kafka
  if pid_alive "$dir/kafka.pid" java; then
    wait_for "kafka" kafka_ready || die "kafka is running but not ready; see $dir/kafka.log"
    log "kafka up (127.0.0.1:$KAFKA_PORT)"
    return 0
  fi
  kafka_install
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
EOF
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
      >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "kafka storage format failed"; }
  fi
  : >"$dir/kafka.log"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_HOME/log4j2.properties" \
    -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$dir/server.properties" \
    >>"$dir/kafka.log" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/kafka.pid"
  wait_for "kafka" kafka_ready || { tail -n 30 "$dir/kafka.log" >&2; die "kafka did not start; see $dir/kafka.log"; }
  log "kafka up (127.0.0.1:$KAFKA_PORT, Kafka $KAFKA_VERSION, KRaft)"
}

kafka_stop() {
  stop_pidfile "$STATE/kafka/kafka.pid" java kafka
}

kafka_status() {
  if pid_alive "$STATE/kafka/kafka.pid" java && kafka_ready; then
    echo "kafka: up (127.0.0.1:$KAFKA_PORT, Kafka $KAFKA_VERSION)"
  else
    echo "kafka: down"
    return 1
  fi
}

app_account_sql() {  # the application's database and account, for MariaDB and TiDB alike
  cat <<EOF
CREATE DATABASE IF NOT EXISTS \`$MYSQL_DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER IF NOT EXISTS '$MYSQL_USER'@'127.0.0.1' IDENTIFIED BY '$MYSQL_PASSWORD';
CREATE USER IF NOT EXISTS '$MYSQL_USER'@'localhost' IDENTIFIED BY '$MYSQL_PASSWORD';
GRANT ALL PRIVILEGES ON \`$MYSQL_DB%\`.* TO '$MYSQL_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`$MYSQL_DB%\`.* TO '$MYSQL_USER'@'localhost';
EOF
}

# ---- MariaDB ------------------------------------------------------------------

mariadb_install() {
  command -v mariadbd >/dev/null && command -v mariadb-install-db >/dev/null \
    && command -v mariadb >/dev/null && return 0
  log "installing mariadb-server"
  apt_install mariadb-server mariadb-client
}

mariadb_sock() { echo "$STATE/mariadb/mariadb.sock"; }

mariadb_root() {  # SQL on stdin, run as root over the private socket
  mariadb --no-defaults --socket="$(mariadb_sock)" -uroot
}

mariadb_ready() {
  mariadb-admin --no-defaults --socket="$(mariadb_sock)" -uroot ping >/dev/null 2>&1
}

mariadb_start() {
  local dir=$STATE/mariadb user
  user=$(id -un)
  if pid_alive "$dir/mariadb.pid" mariadbd; then
    wait_for "mariadb" mariadb_ready || die "mariadb is running but does not answer; see $dir/error.log"
    log "mariadb up (127.0.0.1:$MARIADB_PORT)"
    return 0
  fi
  mariadb_install
  mkdir -p "$dir"
  if [ ! -d "$dir/data/mysql" ]; then
    rm -rf "$dir/data"
    mariadb-install-db --no-defaults --datadir="$dir/data" --user="$user" \
      --auth-root-authentication-method=socket --auth-root-socket-user="$user" \
      --skip-test-db >"$dir/install-db.log" 2>&1 \
      || { cat "$dir/install-db.log" >&2; die "mariadb-install-db failed"; }
  fi
  nohup mariadbd --no-defaults --datadir="$dir/data" --user="$user" \
    --socket="$(mariadb_sock)" --port="$MARIADB_PORT" --bind-address=127.0.0.1 \
    --pid-file="$dir/mariadbd.pid" --log-error="$dir/error.log" \
    --skip-name-resolve --innodb-buffer-pool-size=128M --max-connections=500 \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_bin \
    >>"$dir/mariadbd.out" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/mariadb.pid"
  wait_for "mariadb" mariadb_ready || { tail -n 30 "$dir/error.log" >&2; die "mariadb did not start; see $dir/error.log"; }
  app_account_sql | mariadb_root
  log "mariadb up (127.0.0.1:$MARIADB_PORT, database $MYSQL_DB, user $MYSQL_USER)"
}

mariadb_stop() {
  stop_pidfile "$STATE/mariadb/mariadb.pid" mariadbd mariadb
}

mariadb_status() {
  if pid_alive "$STATE/mariadb/mariadb.pid" mariadbd && mariadb_ready; then
    echo "mariadb: up (127.0.0.1:$MARIADB_PORT)"
  else
    echo "mariadb: down"
    return 1
  fi
}

# ---- TiDB (tidb-server + unistore) -------------------------------------------

go_cmd() {  # the Go toolchain on PATH, else the official tarball's
  if command -v go >/dev/null; then command -v go
  elif [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go
  else return 1
  fi
}

tidb_stamp() {  # what the binary is built from: the pin and the tools module
  { echo "$TIDB_MODULE@$TIDB_MODULE_VERSION"; cat "$TIDB_TOOLS/go.mod" "$TIDB_TOOLS/go.sum"; } \
    | sha256sum | cut -d' ' -f1
}

tidb_install() {
  local want
  want=$(tidb_stamp)
  if [ -x "$TIDB_BIN" ] && [ "$(cat "$TIDB_HOME/.stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  command -v mariadb >/dev/null || apt_install mariadb-client  # the SQL client start uses
  local go started last pid tmp pinned short=${TIDB_MODULE_VERSION##*-}
  go=$(go_cmd) || die "no Go toolchain (looked on PATH and in /usr/local/go/bin); tidb-server is built from its Go module"
  # `go install module@version` refuses modules with replace lines, and TiDB's
  # go.mod has two; scripts/tidb/go.mod is a tools module that repeats them.
  pinned=$(cd "$TIDB_TOOLS" && GOTOOLCHAIN=local GOFLAGS="-mod=readonly -modcacherw" "$go" list -m -f '{{.Version}}' "$TIDB_MODULE") \
    || die "cannot read $TIDB_TOOLS/go.mod (it needs Go >= 1.26; have $("$go" env GOVERSION))"
  [ "$pinned" = "$TIDB_MODULE_VERSION" ] \
    || die "$TIDB_TOOLS/go.mod requires $TIDB_MODULE@$pinned but services.sh pins $TIDB_MODULE_VERSION"
  mkdir -p "$TIDB_HOME"
  tmp=$(mktemp "$TIDB_HOME/tidb-server.tmp.XXXXXX")
  started=$SECONDS
  last=$SECONDS
  log "building tidb-server from $TIDB_MODULE@$TIDB_MODULE_VERSION (Go module proxy; 2-4 minutes on 2 cores, once)"
  # -checklinkname=0: TiDB of 2022 (and its dependencies) reach into the runtime
  # with //go:linkname, which Go 1.23+ refuses to link by default.
  (
    cd "$TIDB_TOOLS"
    export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -modcacherw -buildvcs=false" CGO_ENABLED=0
    exec nice -n 10 "$go" build -trimpath -o "$tmp" \
      -ldflags "-checklinkname=0 -s -w \
        -X 'github.com/pingcap/tidb/parser/mysql.TiDBReleaseVersion=master-$short' \
        -X 'github.com/pingcap/tidb/util/versioninfo.TiDBGitHash=$short' \
        -X 'github.com/pingcap/tidb/util/versioninfo.TiDBGitBranch=master'" \
      "$TIDB_MODULE/tidb-server"
  ) >"$TIDB_HOME/build.log" 2>&1 9>&- &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if ((SECONDS - last >= 60)); then
      last=$SECONDS
      log "tidb-server: still building ($((SECONDS - started)) s; log $TIDB_HOME/build.log)"
    fi
  done
  if ! wait "$pid"; then
    rm -f "$tmp"
    tail -n 30 "$TIDB_HOME/build.log" >&2
    die "building tidb-server failed (log: $TIDB_HOME/build.log)"
  fi
  chmod 0755 "$tmp"
  mv -f "$tmp" "$TIDB_BIN"  # atomic: a concurrent reader sees the whole binary or none
  echo "$want" >"$TIDB_HOME/.stamp"
  log "built $TIDB_BIN in $((SECONDS - started)) s ($("$TIDB_BIN" -V | sed -n 's/^Release Version: //p'))"
}

tidb_status_answers() {  # the status port's /status says 200 once the server is up
  local reply
  reply=$(
    exec 2>/dev/null
    exec 3<>"/dev/tcp/127.0.0.1/$TIDB_STATUS_PORT" || exit 1
    printf 'GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
    timeout 5 head -n1 <&3
  ) || return 1
  [[ $reply == "HTTP/1.1 200"* ]]
}

tidb_ready() {
  pid_alive "$STATE/tidb/tidb.pid" tidb-server && tidb_status_answers && port_open "$TIDB_PORT"
}

tidb_root() {  # SQL on stdin as TiDB's root (password in a 0600 client file)
  mariadb --defaults-file="$STATE/tidb/root.cnf" --protocol=tcp -h127.0.0.1 -P"$TIDB_PORT" -uroot "$@"
}

tidb_start() {
  local dir=$STATE/tidb
  if pid_alive "$dir/tidb.pid" tidb-server; then
    wait_for "tidb" tidb_ready || die "tidb is running but does not answer; see $dir/tidb.log"
    log "tidb up (127.0.0.1:$TIDB_PORT)"
    return 0
  fi
  tidb_install
  if port_open "$TIDB_PORT" || port_open "$TIDB_STATUS_PORT"; then
    die "port $TIDB_PORT or $TIDB_STATUS_PORT is taken by something this script did not start; set TONGXIN_TIDB_PORT"
  fi
  mkdir -p "$dir/tmp"
  [ -d "$dir/data" ] || rm -f "$dir/root.cnf"  # a new store starts with a password-less root
  # Settings are TiDB's defaults except where files go, and split-table. The
  # transaction mode in particular stays unistore's default (optimistic): the
  # adapter sets pessimistic per session, as it must on any TiDB an operator
  # configured.
  #
  # split-table = false: new tables share a region instead of getting one each.
  # unistore keeps transaction locks in memory and writes them to disk only on
  # a clean shutdown (TiKV replicates them through Raft). A two-phase commit
  # returns once the batch holding its primary key is committed; the other
  # batches (other regions, or keys beyond the first 16 KiB) are committed
  # after that, from their locks. After a SIGKILL (the crash tests) those were
  # gone, and rows already acknowledged with them (in about one crash test in
  # four). With one region a transaction of a few keys is one batch, committed
  # before COMMIT returns; one with more than 16 KiB of keys (a group gaining
  # hundreds of members) can still lose rows to a SIGKILL here. (One-phase
  # commit, TiKV's default, would do the same, but unistore's 1PC with
  # pessimistic locks handed out one conversation seq twice, 3 runs in 20 of
  # 300 concurrent appends, so it stays off, as unistore has it.)
  cat >"$dir/tidb.toml" <<EOF
tmp-storage-path = "$dir/tmp/storage"
enable-telemetry = false
split-table = false
[log]
slow-query-file = "$dir/tidb-slow.log"
EOF
  nohup "$TIDB_BIN" --store=unistore --path="$dir/data" --config="$dir/tidb.toml" \
    --host=127.0.0.1 -P "$TIDB_PORT" --status="$TIDB_STATUS_PORT" --status-host=127.0.0.1 \
    --socket="$dir/tidb.sock" --log-file="$dir/tidb.log" \
    >>"$dir/tidb.out" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/tidb.pid"
  wait_for "tidb" tidb_ready || { tail -n 30 "$dir/tidb.log" >&2; die "tidb did not start; see $dir/tidb.log"; }
  if [ ! -s "$dir/root.cnf" ]; then
    local pw
    pw=$(head -c 18 /dev/urandom | base64 | tr '+/' 'AB')
    (umask 077 && printf '[client]\npassword=%s\n' "$pw" >"$dir/root.cnf.new")
    mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$TIDB_PORT" -uroot \
      -e "ALTER USER 'root'@'%' IDENTIFIED BY '$pw'" \
      || die "could not set TiDB's root password; see $dir/tidb.log"
    mv "$dir/root.cnf.new" "$dir/root.cnf"
  fi
  app_account_sql | tidb_root || die "could not create the database and user in TiDB; see $dir/tidb.log"
  log "tidb up (127.0.0.1:$TIDB_PORT, $(tidb_root -N -e 'SELECT VERSION()'), database $MYSQL_DB, user $MYSQL_USER)"
}

tidb_stop() {
  stop_pidfile "$STATE/tidb/tidb.pid" tidb-server tidb
}

tidb_status() {
  if tidb_ready; then
    echo "tidb: up (127.0.0.1:$TIDB_PORT)"
  else
    echo "tidb: down"
    return 1
  fi
}

# ---- env ----------------------------------------------------------------------

print_env() {
  local p nodes=()
  for p in "${REDIS_PORTS[@]}"; do nodes+=("127.0.0.1:$p"); done
  local IFS=,
  cat <<EOF
export TONGXIN_SERVICES_DIR=$STATE
export TONGXIN_REDIS_NODES=${nodes[*]}
export TONGXIN_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
export TONGXIN_KAFKA_HOME=$KAFKA_HOME
export TONGXIN_MYSQL_DSN=mysql://$MYSQL_USER:$MYSQL_PASSWORD@127.0.0.1:$MARIADB_PORT/$MYSQL_DB
export TONGXIN_MYSQL_PASSWORD=$MYSQL_PASSWORD
export TONGXIN_MYSQL_PID_FILE=$STATE/mariadb/mariadb.pid
export TONGXIN_TIDB_DSN=mysql://$MYSQL_USER:$MYSQL_PASSWORD@127.0.0.1:$TIDB_PORT/$MYSQL_DB
export TONGXIN_TIDB_PID_FILE=$STATE/tidb/tidb.pid
EOF
}

# ---- main ---------------------------------------------------------------------

usage() {
  echo "usage: $0 {install|start|stop|status|env} [redis|kafka|mariadb|tidb|all]..." >&2
  exit 2
}

action=${1:-}
shift || true
[ $# -gt 0 ] || set -- all
services=()
for target in "$@"; do
  case "$target" in
    redis | kafka | mariadb | tidb) services+=("$target") ;;
    all) services+=(redis kafka mariadb tidb) ;;
    *) usage ;;
  esac
done

locked() {  # locked NAME COMMAND...: one changer of NAME at a time (tests, CI and a
  # developer's shell may overlap); other services are not held up
  local name=$1
  shift
  (
    exec 9>"$STATE/.lock-$name"
    flock 9
    "$@"
  )
}

mkdir -p "$STATE"
case "$action" in
  install | start | stop)
    for s in "${services[@]}"; do locked "$s" "${s}_${action}"; done
    ;;
  status)
    rc=0
    for s in "${services[@]}"; do "${s}_status" || rc=1; done
    exit "$rc"
    ;;
  env)
    print_env
    ;;
  *) usage ;;
esac
