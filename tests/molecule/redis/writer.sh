#!/bin/bash
# A cluster client for verify.yml: sets one key every 20 ms (with TX_READ=1
# also reads it back), as a cluster client does: it asks the first instance
# that answers, follows MOVED and ASK (redis-cli -c), and goes on to the next
# instance when one is gone or still starting. A write (or read) no instance
# serves has failed.
#   TX_NAME   files /tmp/$TX_NAME.{stop,count,err}, keys tx:$TX_NAME:N
#   TX_CLI    redis-cli and its TLS arguments; TX_ADDR, TX_PORTS (space separated)
#   TX_PW_OLD, TX_PW_NEW  the password, and the one it may change to meanwhile:
#             a client refused with the old one (it never wrote) asks again
#             with the new one
set -u
read -r -a cli <<<"$TX_CLI"
stop=/tmp/$TX_NAME.stop count=/tmp/$TX_NAME.count err=/tmp/$TX_NAME.err
rm -f "$stop" "$count" "$err"
ask() {  # ask PORT COMMAND...: the reply, with the old password, else the new
  local out
  out=$(REDISCLI_AUTH=$TX_PW_OLD "${cli[@]}" -c -h "$TX_ADDR" -p "$@" 2>&1)
  case "$out" in
    *"AUTH failed"*|*NOAUTH*|*WRONGPASS*) out=$(REDISCLI_AUTH=$TX_PW_NEW "${cli[@]}" -c -h "$TX_ADDR" -p "$@" 2>&1) ;;
  esac
  printf '%s' "$out"
}
i=0; fails=0
while [ ! -e "$stop" ]; do
  i=$((i + 1)); ok=""; last=""
  # Up to three rounds over the instances, 0.25 s apart, as redis-py's cluster
  # client does after CLUSTERDOWN: a failover's hand-over leaves a slot without
  # a primary for a moment, which a client rides out; a primary restarted
  # without handing over stays down for seconds and still fails every round.
  for round in 1 2 3; do
  [ "$round" = 1 ] || { case "$last" in *CLUSTERDOWN*|*LOADING*|*"Could not connect"*|*refused*|*reset*|*"Broken pipe"*|*TLS*|*SSL_*|*"Server closed"*) sleep 0.25 ;; *) break ;; esac; }
  for p in $TX_PORTS; do
    out=$(ask "$p" set "tx:$TX_NAME:$i" "v$i")
    if [ "$out" = OK ] && [ "${TX_READ:-0}" = 1 ]; then
      out=$(ask "$p" get "tx:$TX_NAME:$i")
      [ "$out" = "v$i" ] && out=OK
    fi
    case "$out" in
      OK) ok=1; break ;;
      # An instance still starting (CLUSTERDOWN until it has heard from the
      # others, LOADING its data) or going away (the reset of a connection it
      # was closing): nothing was acknowledged, so a cluster client sends the
      # same command to another instance.
      *"Could not connect"*|*"Connection refused"*|*"Connection reset"*|*"Broken pipe"*) last="$p $out"; continue ;;
      # The same with TLS: the handshake with an instance going away.
      *"negotiate a TLS"*|*SSL_*) last="$p $out"; continue ;;
      *CLUSTERDOWN*|*LOADING*|*"Server closed"*) last="$p $out"; continue ;;
      *) last="$p $out"; break ;;
    esac
  done
  [ -n "$ok" ] && break
  done
  [ -n "$ok" ] || { fails=$((fails + 1)); echo "$i $last" >> "$err"; }
  echo "$i $fails" > "$count"
  sleep 0.02
done
