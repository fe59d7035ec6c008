#!/usr/bin/env bash
# flux.sh: publish events and query shared world state on a Flux server, with bash and curl.
# `jq` or `python3`, when present, pretty-print results, check JSON arguments and add the
# missing timestamps to batch events. Reference: docs/cli.md. Run `flux.sh help` for usage.
# This file is the script of the OpenClaw skill skills/flux (docs/skill.md); scripts/flux.sh is
# a link to it.
#
# Exit status: 0 success; 1 the request failed (HTTP status >= 400, server unreachable,
# FLUX_ADMIN_TOKEN missing, a batch event rejected); 2 usage error (wrong arguments, bad JSON);
# 3 a condition failed (HTTP 409: nothing stored; the answer is on stdout); 4 a changes cursor
# too old (HTTP 410: read the whole state again).
set -uo pipefail

PROG=${0##*/}
FLUX_URL=${FLUX_URL:-http://localhost:3000}
FLUX_URL=${FLUX_URL%/}
FLUX_TOKEN=${FLUX_TOKEN:-}
FLUX_ADMIN_TOKEN=${FLUX_ADMIN_TOKEN:-}

usage() {
  cat <<EOF
Usage: $PROG <command> [arguments]

Publish events and query shared world state on a Flux server.

Commands:
  publish STREAM SOURCE ENTITY_ID PROPERTIES_JSON [CONDITIONS] [--ttl-ms N]
                             Publish an event; its properties are merged into the entity.
                             Stored only if every condition holds (else exit 3):
                               --expect-version N   the entity's version is N (0: absent)
                               --if-absent          the entity does not exist yet
                               --expect KEY=JSON    property KEY is JSON (null: absent);
                                                    repeatable
                               --fencing-token T    T is the token of the entity's lease
                             --ttl-ms N: delete the entity if not updated within N ms
  get ENTITY_ID              Show an entity's current state
  list [--prefix P] [--namespace NS]
                             List entities, optionally filtered
  delete ENTITY_ID           Delete an entity
  batch EVENTS_JSON [--atomic]
                             Publish a JSON array of events (missing timestamps are added);
                             --atomic: all of them or none
  batch-delete FILTER_JSON   Delete by {"namespace":NS}, {"prefix":P} or {"entity_ids":[...]}
  history ENTITY_ID [--since ISO8601] [--limit N]
                             Show the events stored for an entity, newest first
  lease acquire ENTITY_ID --owner O --ttl-ms N [--presence] [--properties JSON]
  lease renew ENTITY_ID --owner O --token T --ttl-ms N
  lease release ENTITY_ID --owner O --token T
                             Take, extend or give back a lease on an entity; its token
                             fences writes (publish --fencing-token); --presence: the
                             entity is deleted when the lease ends
  changes [--since V] [--prefix P] [--namespace NS] [--limit N] [--follow [--interval S]]
                             What changed after version V (one page; ask again from its
                             "next"); --follow polls until Ctrl-C
  connectors                 List connectors and their status
  admin-config [JSON]        Show the runtime config, or update it (needs FLUX_ADMIN_TOKEN)
  health                     Check the connection and count the entities
  help                       Show this help

Examples:
  $PROG publish sensors agent-01 dawn-coral/sensor-01 '{"temperature":22.5}'
  $PROG get dawn-coral/sensor-01
  $PROG list --prefix dawn-coral/
  $PROG batch '[{"stream":"sensors","source":"agent-01",
      "payload":{"entity_id":"dawn-coral/sensor-02","properties":{"temp":23}}}]'
  $PROG publish tasks planner dawn-coral/task-7 '{"status":"open"}' --if-absent
  $PROG publish tasks worker-3 dawn-coral/task-7 '{"status":"taken"}' --expect status='"open"'
  $PROG lease acquire dawn-coral/leader --owner node-1 --ttl-ms 10000
  $PROG changes --since 1200 --prefix dawn-coral/

Environment:
  FLUX_URL          Flux server (default: http://localhost:3000; now: $FLUX_URL)
  FLUX_TOKEN        Bearer token sent with every request (your namespace token)
  FLUX_ADMIN_TOKEN  Bearer token for admin-config updates
  FLUX_PRETTY       1: always pretty-print JSON; 0: never (default: only on a terminal)
  FLUX_TIMEOUT      Seconds to wait for an answer (default: 30)

Exit status: 0 success, 1 request failed or server unreachable, 2 usage error,
3 condition failed (nothing stored; the answer, with current_version, is on stdout),
4 changes cursor too old (read the whole state again, then follow from its version).
EOF
}

die_usage() {
  printf 'Error: %s\n' "$1" >&2
  printf "Run '%s help' for usage.\n" "$PROG" >&2
  exit 2
}

have() { command -v "$1" >/dev/null 2>&1; }

progress() { printf '%s\n' "$1" >&2; }

# Current time in epoch milliseconds (GNU date has %N; elsewhere seconds * 1000).
now_ms() {
  local ms
  ms=$(date +%s%3N 2>/dev/null)
  case $ms in
    '' | *[!0-9]*) ms="$(date +%s)000" ;;
  esac
  printf '%s' "$ms"
}

# A string's JSON-escaped contents (without the surrounding quotes).
json_escape() {
  local s=$1 bs=\\ q='"' c hex i
  s=${s//"$bs"/"$bs$bs"}
  s=${s//"$q"/"$bs$q"}
  if [[ $s == *[[:cntrl:]]* ]]; then
    s=${s//$'\n'/"${bs}n"}
    s=${s//$'\r'/"${bs}r"}
    s=${s//$'\t'/"${bs}t"}
    for ((i = 1; i < 32; i++)); do
      printf -v hex '%02x' "$i"
      printf -v c '%b' "\\x$hex"
      [[ $s == *"$c"* ]] && s=${s//"$c"/"${bs}u00$hex"}
    done
  fi
  printf '%s' "$s"
}

# Percent-encode everything but unreserved characters (so '/' -> %2F, ' ' -> %20, ...).
url_encode() {
  local LC_ALL=C s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [a-zA-Z0-9.~_-]) out+=$c ;;
      *)
        printf -v c '%%%02X' "'$c"
        out+=$c
        ;;
    esac
  done
  # "." and ".." would be resolved away as path segments
  case $out in
    . | ..) out=${out//./%2E} ;;
  esac
  printf '%s' "$out"
}

# Check that $2 is one JSON value (named $1 in the error), a JSON object when $3 is `object`;
# exits 2 if not. Without jq or python3 only an object's braces are checked.
require_json() {
  local name=$1 text=$2 kind=${3:-value} err status
  if have jq; then
    err=$(printf '%s' "$text" | jq -e -s --arg kind "$kind" \
      'length == 1 and ($kind == "value" or (.[0] | type) == "object")' 2>&1 >/dev/null)
    status=$?
    [ $status -eq 0 ] && return 0
    [ $status -eq 1 ] && die_usage "$name: expected a JSON $kind"
    die_usage "$name: not valid JSON: ${err#jq: error (at <stdin>:*): }"
  elif have python3; then
    err=$(printf '%s' "$text" | python3 -c '
import json, sys
def reject(name):
    raise ValueError(name + " is not valid JSON")
try:
    doc = json.loads(sys.stdin.read(), parse_constant=reject)
except ValueError as exc:
    sys.exit("not valid JSON: %s" % exc)
if sys.argv[1] == "object" and not isinstance(doc, dict):
    sys.exit("expected a JSON object")
' "$kind" 2>&1) || die_usage "$name: $err"
  elif [ "$kind" = object ]; then
    [[ $text =~ ^[[:space:]]*\{.*\}[[:space:]]*$ ]] || die_usage "$name: expected a JSON object"
  else
    [[ $text =~ [^[:space:]] ]] || die_usage "$name: expected a JSON value"
  fi
}

# The whole number in $2 (option $1), at least $3, without leading zeros; exits 2 if it is not
# one (call it as `n=$(int_arg ...) || exit 2`).
int_arg() {
  local name=$1 value=$2 min=$3
  if [[ $value =~ ^[0-9]{1,18}$ ]] && [ $((10#$value)) -ge "$min" ]; then
    printf '%s' $((10#$value))
  else
    die_usage "$name: expected a whole number of at least $min, got '$value'"
  fi
}

# The batch request body: {"events":[...]} from an array or an {"events":[...]} object, with
# the current time added to events without a timestamp, and "atomic": true when $2 is 1 or the
# object says so. Needs python3 (or jq); without either the events are sent as given (so each
# one needs its own "timestamp").
batch_body() {
  local text=$1 atomic=${2:-0} ts
  ts=$(now_ms)
  if have python3; then
    printf '%s' "$text" | python3 -c '
import json, sys
def reject(name):
    raise ValueError(name + " is not valid JSON")
try:
    doc = json.loads(sys.stdin.read(), parse_constant=reject)
except ValueError as exc:
    sys.exit("EVENTS_JSON is not valid JSON: %s" % exc)
events = doc.get("events") if isinstance(doc, dict) else doc
if not isinstance(events, list):
    sys.exit("EVENTS_JSON must be a JSON array of events or {\"events\": [...]}")
ts = int(sys.argv[1])
events = [dict(e, timestamp=ts) if isinstance(e, dict) and "timestamp" not in e else e
          for e in events]
body = {"events": events}
if sys.argv[2] == "1" or (isinstance(doc, dict) and doc.get("atomic") is True):
    body["atomic"] = True
print(json.dumps(body, ensure_ascii=False))
' "$ts" "$atomic"
  elif have jq; then
    printf '%s' "$text" | jq -c --argjson ts "$ts" --argjson atomic "$atomic" '
      (if type == "array" then {events: .} else . end)
      | if type == "object" and (.events | type) == "array"
        then .events |= map(if type == "object" and (has("timestamp") | not)
                            then .timestamp = $ts else . end)
             | if $atomic == 1 then .atomic = true else . end
        else error("EVENTS_JSON must be a JSON array of events or {\"events\": [...]}") end'
  elif [[ $text =~ ^[[:space:]]*\[ ]]; then
    if [ "$atomic" = 1 ]; then
      printf '{"events":%s,"atomic":true}' "$text"
    else
      printf '{"events":%s}' "$text"
    fi
  elif [ "$atomic" = 1 ]; then
    # the last of duplicate keys wins
    printf '%s,"atomic":true}' "${text%\}*}"
  else
    printf '%s' "$text"
  fi
}

want_pretty() {
  case ${FLUX_PRETTY:-} in
    1 | true | yes) return 0 ;;
    0 | false | no) return 1 ;;
  esac
  [ -t 1 ]
}

# call METHOD PATH [BODY [TOKEN]]: sets STATUS and BODY. Returns 0 for HTTP 2xx/3xx; prints
# `Error: <server message> (HTTP n)` to stderr and returns 1 otherwise.
STATUS=
BODY=
call() {
  local method=$1 path=$2 token=${4-$FLUX_TOKEN} out
  local args=(-sS -X "$method" "$FLUX_URL$path" -w '\n%{http_code}'
    --connect-timeout 10 --max-time "${FLUX_TIMEOUT:-30}")
  if [ $# -ge 3 ]; then
    args+=(-H 'Content-Type: application/json' --data-binary @-)
  fi
  if [ -n "$token" ]; then
    # from a file descriptor, so the token does not show in the process list
    out=$(printf '%s' "${3-}" | curl "${args[@]}" -H @<(printf 'Authorization: Bearer %s\n' "$token"))
  else
    out=$(printf '%s' "${3-}" | curl "${args[@]}")
  fi || {
    STATUS=000
    BODY=
    printf 'Error: cannot reach Flux at %s\n' "$FLUX_URL" >&2
    return 1
  }
  STATUS=${out##*$'\n'}
  BODY=${out%$'\n'*}
  if [ "$STATUS" -ge 400 ] 2>/dev/null; then
    printf 'Error: %s (HTTP %s)\n' "$(error_message)" "$STATUS" >&2
    if [ "$STATUS" = 409 ] && [[ $BODY == *'"current_version":'* ]]; then
      conflict_note >&2
      emit
      return 3
    fi
    if [ "$STATUS" = 410 ] && [[ $BODY =~ \"resync\":true.*\"version\":([0-9]+)\}$ ]]; then
      local at=${BASH_REMATCH[1]}
      printf '  the server is at version %s: read the state (%s list), ' "$at" "$PROG" >&2
      printf 'then follow from there (%s changes --since %s)\n' "$PROG" "$at" >&2
      return 4
    fi
    return 1
  fi
  return 0
}

# A failed condition (a 409's BODY) for people: the entity's version now, who changed it last,
# who holds its lease. Needs python3 or jq; without them, the version alone.
conflict_note() {
  if have python3 && printf '%s' "$BODY" | python3 -c '
import json, sys, time
def when(ms):
    if type(ms) is not int:
        return str(ms)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))
doc = json.load(sys.stdin)
where = "event %s of the atomic batch: " % doc["index"] if "index" in doc else ""
current = doc.get("current")
if not isinstance(current, dict):
    print("  %sentity %s does not exist (version 0)" % (where, doc.get("entity_id")))
    sys.exit()
line = "  %sentity %s: version %s" % (where, doc.get("entity_id"), doc.get("current_version"))
if doc.get("last_source") is not None:
    line += ", last changed by %s at %s" % (doc["last_source"], when(doc.get("last_timestamp")))
print(line)
lease = (current.get("properties") or {}).get("__lease__")
if isinstance(lease, dict) and lease.get("owner") is not None:
    print("  lease: held by %s (token %s) until %s"
          % (json.dumps(lease["owner"]), lease.get("token"), when(lease.get("expires_at"))))
' 2>/dev/null; then
    return 0
  fi
  if have jq && printf '%s' "$BODY" | jq -r '
      def when: if type == "number" then (. / 1000 | floor | todate) else tostring end;
      (if has("index") then "event \(.index) of the atomic batch: " else "" end) as $where
      | if (.current | type) != "object"
        then "  \($where)entity \(.entity_id) does not exist (version 0)"
        else "  \($where)entity \(.entity_id): version \(.current_version)"
             + (if .last_source != null
                then ", last changed by \(.last_source) at \(.last_timestamp | when)" else "" end),
             (.current.properties.__lease__ // {} | select(.owner != null)
              | "  lease: held by \(.owner | tojson) (token \(.token)) until \(.expires_at | when)")
        end' 2>/dev/null; then
    return 0
  fi
  if [[ $BODY =~ \"current_version\":([0-9]+) ]]; then
    printf '  current version: %s\n' "${BASH_REMATCH[1]}"
  fi
}

# The "error" text of a JSON error body, else the body (or the status when it is empty).
error_message() {
  local msg=''
  if have jq; then
    msg=$(printf '%s' "$BODY" |
      jq -r 'if type == "object" and (.error | type) == "string" then .error else empty end' \
        2>/dev/null)
  elif have python3; then
    msg=$(printf '%s' "$BODY" | python3 -c '
import json, sys
try:
    doc = json.load(sys.stdin)
except ValueError:
    sys.exit()
if isinstance(doc, dict) and isinstance(doc.get("error"), str):
    print(doc["error"])
' 2>/dev/null)
  elif [[ $BODY =~ ^\{\"error\":\"(.*)\"\}$ ]]; then
    msg=${BASH_REMATCH[1]}
  fi
  [ -n "$msg" ] || msg=${BODY:0:200}
  printf '%s' "${msg:-request failed}"
}

# Print BODY on stdout: pretty when wanted and a formatter exists, else as received.
emit() {
  if want_pretty; then
    if have jq && printf '%s' "$BODY" | jq . 2>/dev/null; then
      return 0
    fi
    if have python3 && printf '%s' "$BODY" | python3 -m json.tool --no-ensure-ascii 2>/dev/null; then
      return 0
    fi
  fi
  printf '%s\n' "$BODY"
}

# -- commands ----------------------------------------------------------------------------------

cmd_publish() {
  local usage="usage: $PROG publish STREAM SOURCE ENTITY_ID PROPERTIES_JSON [--expect-version N]"
  usage+=" [--if-absent] [--expect KEY=JSON]... [--fencing-token T] [--ttl-ms N]"
  [ $# -ge 4 ] || die_usage "$usage"
  local stream=$1 source=$2 entity_id=$3 properties=$4
  shift 4
  require_json PROPERTIES_JSON "$properties" object
  # The options (after the four arguments) become the event's top-level fields.
  local version='' absent='' expected='' extra='' key n
  while [ $# -gt 0 ]; do
    case $1 in
      --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    esac
    case $1 in
      --expect-version | --expect | --fencing-token | --ttl-ms)
        [ $# -ge 2 ] || die_usage "$1 needs a value"
        ;;
    esac
    case $1 in
      --expect-version)
        version=$(int_arg "$1" "$2" 0) || exit 2
        shift 2
        ;;
      --if-absent)
        absent=1
        shift
        ;;
      --expect)
        key=${2%%=*}
        [[ $2 == *=* && -n $key ]] || die_usage "--expect: expected KEY=JSON, got '$2'"
        require_json "--expect $key (a string needs quotes: $key='\"text\"')" "${2#*=}"
        expected+=",\"$(json_escape "$key")\":${2#*=}"
        shift 2
        ;;
      --fencing-token)
        n=$(int_arg "$1" "$2" 1) || exit 2
        extra+=",\"fencing_token\":$n"
        shift 2
        ;;
      --ttl-ms)
        n=$(int_arg "$1" "$2" 0) || exit 2
        extra+=",\"ttl_ms\":$n"
        shift 2
        ;;
      *) die_usage "$usage" ;;
    esac
  done
  if [ -n "$absent" ]; then
    [ "${version:-0}" = 0 ] || die_usage "--if-absent means --expect-version 0; give one of them"
    version=0
  fi
  [ -n "$version" ] && extra+=",\"expected_version\":$version"
  [ -n "$expected" ] && extra+=",\"expected_properties\":{${expected#,}}"
  local body
  body="{\"stream\":\"$(json_escape "$stream")\",\"source\":\"$(json_escape "$source")\""
  body+=",\"timestamp\":$(now_ms),\"payload\":{\"entity_id\":\"$(json_escape "$entity_id")\""
  body+=",\"properties\":$properties}$extra}"
  progress "Publishing event to Flux..."
  call POST /api/events "$body" && emit
}

cmd_batch() {
  local atomic=0 arg args=()
  for arg; do
    if [ "$arg" = --atomic ]; then atomic=1; else args+=("$arg"); fi
  done
  set -- ${args[@]+"${args[@]}"}
  [ $# -eq 1 ] || die_usage "usage: $PROG batch EVENTS_JSON [--atomic]"
  local body
  body=$(batch_body "$1" "$atomic" 2>&1) || die_usage "${body:-EVENTS_JSON is not a valid batch}"
  progress "Publishing batch to Flux..."
  call POST /api/events/batch "$body" || return
  emit
  if [[ $BODY =~ \"failed\":([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -gt 0 ]; then
    local failed=${BASH_REMATCH[1]} conflicts=0 rest=$BODY mark='"sequence":null,"conflict":'
    printf 'Error: %s event(s) rejected (see "results")\n' "$failed" >&2
    # A result refused by its condition has "sequence":null followed by its "conflict".
    while [[ $rest == *"$mark"* ]]; do
      rest=${rest#*"$mark"}
      conflicts=$((conflicts + 1))
    done
    if [ "$conflicts" = "$failed" ]; then
      printf '  a condition failed for each of them (see their "conflict")\n' >&2
      return 3
    fi
    return 1
  fi
}

cmd_get() {
  [ $# -eq 1 ] || die_usage "usage: $PROG get ENTITY_ID"
  call GET "/api/state/entities/$(url_encode "$1")" && emit
}

cmd_list() {
  local query=''
  while [ $# -gt 0 ]; do
    case $1 in
      --prefix | --namespace)
        [ $# -ge 2 ] || die_usage "$1 needs a value"
        query+="&${1#--}=$(url_encode "$2")"
        shift 2
        ;;
      --prefix=* | --namespace=*)
        local name=${1%%=*}
        query+="&${name#--}=$(url_encode "${1#*=}")"
        shift
        ;;
      *) die_usage "usage: $PROG list [--prefix P] [--namespace NS]" ;;
    esac
  done
  call GET "/api/state/entities${query:+?${query#&}}" && emit
}

cmd_delete() {
  [ $# -eq 1 ] || die_usage "usage: $PROG delete ENTITY_ID"
  progress "Deleting entity $1..."
  call DELETE "/api/state/entities/$(url_encode "$1")" && emit
}

cmd_batch_delete() {
  [ $# -eq 1 ] || die_usage "usage: $PROG batch-delete FILTER_JSON"
  require_json FILTER_JSON "$1" object
  progress "Batch deleting entities..."
  call POST /api/state/entities/delete "$1" && emit
}

cmd_history() {
  [ $# -ge 1 ] || die_usage "usage: $PROG history ENTITY_ID [--since ISO8601] [--limit N]"
  local query
  query="entity=$(url_encode "$1")"
  shift
  while [ $# -gt 0 ]; do
    case $1 in
      --since | --limit)
        [ $# -ge 2 ] || die_usage "$1 needs a value"
        query+="&${1#--}=$(url_encode "$2")"
        shift 2
        ;;
      *) die_usage "usage: $PROG history ENTITY_ID [--since ISO8601] [--limit N]" ;;
    esac
  done
  call GET "/api/events?$query" && emit
}

cmd_lease() {
  local op=${1-} usage
  case $op in
    acquire)
      usage="lease acquire ENTITY_ID --owner O --ttl-ms N [--presence] [--properties JSON]"
      ;;
    renew) usage="lease renew ENTITY_ID --owner O --token T --ttl-ms N" ;;
    release) usage="lease release ENTITY_ID --owner O --token T" ;;
    *) die_usage "usage: $PROG lease acquire|renew|release ENTITY_ID --owner O ..." ;;
  esac
  usage="usage: $PROG $usage"
  [ $# -ge 2 ] || die_usage "$usage"
  local entity_id=$2 owner='' token='' ttl='' presence='' properties=''
  shift 2
  while [ $# -gt 0 ]; do
    case $1 in
      --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    esac
    case $op:$1 in
      *:--owner | renew:--token | release:--token | acquire:--ttl-ms | renew:--ttl-ms | \
        acquire:--properties)
        [ $# -ge 2 ] || die_usage "$1 needs a value"
        ;;
    esac
    case $op:$1 in
      *:--owner) owner=$2 ;;
      renew:--token | release:--token) token=$(int_arg "$1" "$2" 1) || exit 2 ;;
      acquire:--ttl-ms | renew:--ttl-ms) ttl=$(int_arg "$1" "$2" 1) || exit 2 ;;
      acquire:--properties) properties=$2 ;;
      acquire:--presence)
        presence=1
        shift
        continue
        ;;
      *) die_usage "$usage" ;;
    esac
    shift 2
  done
  [ -n "$owner" ] || die_usage "--owner is required: $usage"
  [ "$op" = acquire ] || [ -n "$token" ] || die_usage "--token is required: $usage"
  [ "$op" = release ] || [ -n "$ttl" ] || die_usage "--ttl-ms is required: $usage"
  local body="{\"entity_id\":\"$(json_escape "$entity_id")\",\"owner\":\"$(json_escape "$owner")\""
  [ -n "$token" ] && body+=",\"token\":$token"
  [ -n "$ttl" ] && body+=",\"ttl_ms\":$ttl"
  [ -n "$presence" ] && body+=',"presence":true'
  if [ -n "$properties" ]; then
    require_json --properties "$properties" object
    body+=",\"properties\":$properties"
  fi
  body+='}'
  call POST "/api/leases/$op" "$body" && emit
}

cmd_changes() {
  local usage="usage: $PROG changes [--since V] [--prefix P] [--namespace NS] [--limit N]"
  usage+=" [--follow [--interval SECONDS]]"
  local since=0 query='' follow='' interval=1
  while [ $# -gt 0 ]; do
    case $1 in
      --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    esac
    case $1 in
      --since | --prefix | --namespace | --limit | --interval)
        [ $# -ge 2 ] || die_usage "$1 needs a value"
        ;;
    esac
    case $1 in
      --since) since=$(int_arg "$1" "$2" 0) || exit 2 ;;
      --prefix | --namespace) query+="&${1#--}=$(url_encode "$2")" ;;
      --limit) query+="&limit=$(int_arg "$1" "$2" 1)" || exit 2 ;;
      --interval)
        [[ $2 =~ ^[0-9]+(\.[0-9]+)?$ && ! $2 =~ ^0+(\.0+)?$ ]] ||
          die_usage "--interval: expected a number of seconds, got '$2'"
        interval=$2
        ;;
      --follow)
        follow=1
        shift
        continue
        ;;
      *) die_usage "$usage" ;;
    esac
    shift 2
  done
  # The page ends with "next" and "more" (the answer's last two fields).
  local tail='"next":([0-9]+),"more":(true|false)\}$'
  if [ -z "$follow" ]; then
    call GET "/api/state/changes?since=$since$query" || return
    emit
    if [[ $BODY =~ $tail ]] && [ "${BASH_REMATCH[2]}" = true ]; then
      progress "More changes are waiting: $PROG changes --since ${BASH_REMATCH[1]}"
    fi
    return 0
  fi
  progress "Following changes after version $since at $FLUX_URL (Ctrl-C stops)..."
  while true; do
    call GET "/api/state/changes?since=$since$query" || return
    [[ $BODY == '{"changes":[],"deleted":[],'* ]] || emit
    if ! [[ $BODY =~ $tail ]]; then
      printf 'Error: the server answered a page without "next"\n' >&2
      return 1
    fi
    since=${BASH_REMATCH[1]}
    [ "${BASH_REMATCH[2]}" = true ] || sleep "$interval"
  done
}

cmd_connectors() {
  [ $# -eq 0 ] || die_usage "usage: $PROG connectors"
  call GET /api/connectors && emit
}

cmd_admin_config() {
  case $# in
    0) call GET /api/admin/config && emit ;;
    1)
      if [ -z "$FLUX_ADMIN_TOKEN" ]; then
        printf 'Error: FLUX_ADMIN_TOKEN not set\n' >&2
        return 1
      fi
      require_json JSON "$1" object
      call PUT /api/admin/config "$1" "$FLUX_ADMIN_TOKEN" && emit
      ;;
    *) die_usage "usage: $PROG admin-config [JSON]" ;;
  esac
}

# Entities in BODY (a health answer, or a list of entities from an older server).
entity_count() {
  if [[ $BODY =~ ^\{.*\"entities\":([0-9]+) ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
  elif have jq; then
    printf '%s' "$BODY" | jq 'length' 2>/dev/null || printf '?'
  elif have python3; then
    printf '%s' "$BODY" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))' \
      2>/dev/null || printf '?'
  else
    printf '?'
  fi
}

cmd_health() {
  [ $# -eq 0 ] || die_usage "usage: $PROG health"
  progress "Testing Flux connection at $FLUX_URL..."
  # Servers without /api/health (the original Flux) are checked through the entity list.
  if ! call GET /api/health 2>/dev/null && [ "$STATUS" = 404 ]; then
    call GET /api/state/entities 2>/dev/null
  fi
  if [ "$STATUS" = 000 ]; then
    printf '✗ Failed to reach Flux at %s\n' "$FLUX_URL" >&2
    return 1
  elif [ "$STATUS" -ge 400 ] 2>/dev/null; then
    printf '✗ Failed to reach Flux at %s: %s (HTTP %s)\n' "$FLUX_URL" "$(error_message)" \
      "$STATUS" >&2
    return 1
  fi
  printf '✓ Flux is reachable\n'
  printf '  Entities in state: %s\n' "$(entity_count)"
}

main() {
  [ $# -gt 0 ] || {
    usage >&2
    exit 2
  }
  local command=$1
  shift
  case ${1-} in
    -h | --help)
      usage
      exit 0
      ;;
  esac
  case $command in
    publish) cmd_publish "$@" ;;
    batch) cmd_batch "$@" ;;
    get) cmd_get "$@" ;;
    list) cmd_list "$@" ;;
    delete) cmd_delete "$@" ;;
    batch-delete) cmd_batch_delete "$@" ;;
    history) cmd_history "$@" ;;
    lease) cmd_lease "$@" ;;
    changes) cmd_changes "$@" ;;
    connectors) cmd_connectors "$@" ;;
    admin-config) cmd_admin_config "$@" ;;
    health) cmd_health "$@" ;;
    help | -h | --help) usage ;;
    *) die_usage "unknown command '$command'" ;;
  esac
}

main "$@"
