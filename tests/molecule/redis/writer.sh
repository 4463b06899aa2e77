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
  local out rc
  out=$(REDISCLI_AUTH=$TX_PW_OLD "${cli[@]}" -c -h "$TX_ADDR" -p "$@" 2>&1); rc=$?
  case "$out" in
    *"AUTH failed"*|*NOAUTH*|*WRONGPASS*) out=$(REDISCLI_AUTH=$TX_PW_NEW "${cli[@]}" -c -h "$TX_ADDR" -p "$@" 2>&1); rc=$? ;;
  esac
  # redis-cli ended without a word (a full run had one, asking the instance
  # being restarted): named, with its exit status.
  [ -n "$out" ] || out="(no output, exit $rc)"
  printf '%s' "$out"
}
# unanswered OUTPUT: whether redis-cli's output says no instance answered the
# command, so nothing was acknowledged and a cluster client sends it to another
# instance: an instance still starting (CLUSTERDOWN until it has heard from the
# others, LOADING its data), or one going away. redis-cli names the latter
# "Could not connect ...", "Could not negotiate a TLS connection ...", "I/O
# error" (the connection closed during its AUTH) or "Error: <reason>" (any
# error of the connection itself: "Server closed the connection", "Connection
# reset by peer", and with TLS strerror of whatever errno was, even
# "Success"), or nothing at all ("(no output ...)", from ask: the process
# ended with no reply, killed or not). Everything else is an answer: OK or a
# refusal, which fails.
unanswered() {
  case "$1" in
    *CLUSTERDOWN*|*LOADING*|*"Could not connect"*|*"Could not negotiate"*|*"I/O error"*|"Error: "*|*$'\n'"Error: "*|"(no output, exit "*) return 0 ;;
    *) return 1 ;;
  esac
}
i=0; fails=0
while [ ! -e "$stop" ]; do
  i=$((i + 1)); ok=""; last=""; out=""
  # Up to three rounds over the instances, 0.25 s apart, as redis-py's cluster
  # client does after CLUSTERDOWN: a failover's hand-over leaves a slot without
  # a primary for a moment, which a client rides out; a primary restarted
  # without handing over stays down for seconds and still fails every round.
  for round in 1 2 3; do
  if [ "$round" -gt 1 ]; then unanswered "$out" || break; sleep 0.25; fi
  for p in $TX_PORTS; do
    out=$(ask "$p" set "tx:$TX_NAME:$i" "v$i")
    if [ "$out" = OK ] && [ "${TX_READ:-0}" = 1 ]; then
      out=$(ask "$p" get "tx:$TX_NAME:$i")
      # A nil reply prints an empty line: the key is gone, an answer that fails.
      case "$out" in "v$i") out=OK ;; "(no output, exit 0)") out="(nil: the key is not there)" ;; esac
    fi
    [ "$out" = OK ] && { ok=1; break; }
    last="$p $(printf '%s' "$out" | tr '\n' ' ')"
    unanswered "$out" && continue
    break
  done
  [ -n "$ok" ] && break
  done
  [ -n "$ok" ] || { fails=$((fails + 1)); echo "$i $last" >> "$err"; }
  echo "$i $fails" > "$count"
  sleep 0.02
done
