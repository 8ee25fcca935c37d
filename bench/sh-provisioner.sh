#!/bin/sh
# A POSIX-sh stand-in for examples/script-provisioner.py, for `makespan.py --script sh`: the same call
# record (ts, action, phase, contract, agent, pid; tab-separated) and instance files, without a Python
# start-up per call. It separates the agent's and the server's own cost from the provider script's.
#   sh-provisioner.sh provision|find DIR LOG DELAY      (contract id from $DC_AGENT_CONTRACT_ID)
set -eu
action=$1 dir=$2 log=$3 delay=$4
cid=$DC_AGENT_CONTRACT_ID
agent=${AGENT_NAME:--}
cat >/dev/null
mkdir -p "$dir"
case $action in
provision)
  printf '%s\tprovision\tstart\t%s\t%s\t%s\n' "$(date +%s%N)" "$cid" "$agent" "$$" >>"$log"
  sleep "$delay"
  details=$(printf '{"externalId":"demo-%s","ipAddress":"192.0.2.1","sshPort":22,"node":"%s"}' "$cid" "$agent")
  printf '%s\n' "$details" >"$dir/$cid.details.tmp" && mv "$dir/$cid.details.tmp" "$dir/$cid.details"
  printf '{"contractId":"%s","details":%s}\n' "$cid" "$details" >"$dir/$cid.json.tmp" && mv "$dir/$cid.json.tmp" "$dir/$cid.json"
  printf '%s\tprovision\tdone\t%s\t%s\t%s\n' "$(date +%s%N)" "$cid" "$agent" "$$" >>"$log"
  printf '%s\n' "$details"
  ;;
find)
  if [ -f "$dir/$cid.details" ]; then cat "$dir/$cid.details"; else echo null; fi
  ;;
*) echo "unknown action $action" >&2; exit 2 ;;
esac
