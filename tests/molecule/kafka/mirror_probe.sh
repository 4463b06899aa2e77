#!/bin/bash
# Mirror latency probe, run on both sites' hosts at the same time:
#   mirror_probe.sh BOOTSTRAP PEER MINE THEIRS PARTITION COUNT
# Produces records keyed "mirror-probe" (partition PARTITION of 12 by the
# Java client's murmur2 partitioner) to this site's tongxin.deliveries and
# reads the peer's, copied by this site's MirrorMaker 2 into
# PEER.tongxin.deliveries, from a consumer that stamps each record with its
# arrival time. Both hosts share one kernel clock, so arrival minus the
# record's CreateTime (set by the producer at the source site and kept by
# MM2) is the time from one site's producer to the other site's consumer.
#
# A handshake makes sure both consumers are reading before the timed records
# go out: each side sends MINE-ready, waits for THEIRS-ready (its consumer is
# live), sends MINE-seen, waits for THEIRS-seen (the peer's consumer is live),
# then sends COUNT records 0.2 s apart and waits for the peer's last one.
# Prints one line per peer record: "latency_ms N MS".
set -euo pipefail
bootstrap=$1 peer=$2 mine=$3 theirs=$4 partition=$5 count=$6
bin=${KAFKA_BIN:-/opt/kafka/bin}
dir=$(mktemp -d)
cleanup() {
  local jobs
  jobs=$(jobs -p)
  if [ -n "$jobs" ]; then kill $jobs 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT
: >"$dir/arrivals"

"$bin/kafka-console-consumer.sh" --bootstrap-server "$bootstrap" --topic "$peer.tongxin.deliveries" \
  --partition "$partition" --offset earliest --timeout-ms 120000 \
  --formatter-property print.timestamp=true 2>"$dir/consumer.err" \
  | python3 -u -c '
import sys, time
for line in sys.stdin:
    print(int(time.time() * 1000), line, end="", flush=True)
' >"$dir/arrivals" &

await() {  # await PATTERN SECONDS: until a record matching PATTERN has arrived
  local deadline=$((SECONDS + $2))
  until grep -q -- "$1" "$dir/arrivals"; do
    if ((SECONDS >= deadline)); then
      echo "no record matching $1 from $peer in $2 s; consumer: $(tail -3 "$dir/consumer.err")" >&2
      return 1
    fi
    sleep 0.05
  done
}

{
  printf 'mirror-probe:%s-ready\n' "$mine"
  await "$theirs-ready\$" 150
  printf 'mirror-probe:%s-seen\n' "$mine"
  await "$theirs-seen\$" 60
  for i in $(seq 1 "$count"); do
    printf 'mirror-probe:%s-%d\n' "$mine" "$i"
    sleep 0.2
  done
  await "$theirs-$count\$" 60
} | "$bin/kafka-console-producer.sh" --bootstrap-server "$bootstrap" --topic tongxin.deliveries \
      --reader-property parse.key=true --reader-property key.separator=: \
      --command-property linger.ms=0 2>"$dir/producer.err" || {
  echo "producer: $(tail -3 "$dir/producer.err")" >&2
  exit 1
}

# "<arrival ms> CreateTime:<ms>\t<value>" -> "latency_ms <n> <arrival - created>"
awk -v p="^$theirs-" -F'[ \t:]' '$4 ~ p && $4 !~ /-(ready|seen)$/ {
  n = $4; sub(/.*-/, "", n); printf "latency_ms %s %d\n", n, $1 - $3 }' "$dir/arrivals"
