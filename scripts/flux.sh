#!/usr/bin/env bash
# flux.sh: publish events and query shared world state on a Flux server, with bash and curl.
# `jq` or `python3`, when present, pretty-print results, check JSON arguments and add the
# missing timestamps to batch events. Reference: docs/cli.md. Run `flux.sh help` for usage.
#
# Exit status: 0 success; 1 the request failed (HTTP status >= 400, server unreachable,
# FLUX_ADMIN_TOKEN missing, a batch event rejected); 2 usage error (wrong arguments, bad JSON).
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
  publish STREAM SOURCE ENTITY_ID PROPERTIES_JSON
                             Publish an event; its properties are merged into the entity
  get ENTITY_ID              Show an entity's current state
  list [--prefix P] [--namespace NS]
                             List entities, optionally filtered
  delete ENTITY_ID           Delete an entity
  batch EVENTS_JSON          Publish a JSON array of events (missing timestamps are added)
  batch-delete FILTER_JSON   Delete by {"namespace":NS}, {"prefix":P} or {"entity_ids":[...]}
  history ENTITY_ID [--since ISO8601] [--limit N]
                             Show the events stored for an entity, newest first
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

Environment:
  FLUX_URL          Flux server (default: http://localhost:3000; now: $FLUX_URL)
  FLUX_TOKEN        Bearer token sent with every request (your namespace token)
  FLUX_ADMIN_TOKEN  Bearer token for admin-config updates
  FLUX_PRETTY       1: always pretty-print JSON; 0: never (default: only on a terminal)
  FLUX_TIMEOUT      Seconds to wait for an answer (default: 30)

Exit status: 0 success, 1 request failed or server unreachable, 2 usage error.
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

# Check that $2 is one JSON object (named $1 in the error); exits 2 if not.
require_json_object() {
  local name=$1 text=$2 err status
  if have jq; then
    err=$(printf '%s' "$text" | jq -e -s 'length == 1 and (.[0] | type) == "object"' 2>&1 >/dev/null)
    status=$?
    [ $status -eq 0 ] && return 0
    [ $status -eq 1 ] && die_usage "$name: expected a JSON object"
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
if not isinstance(doc, dict):
    sys.exit("expected a JSON object")
' 2>&1) || die_usage "$name: $err"
  else
    [[ $text =~ ^[[:space:]]*\{.*\}[[:space:]]*$ ]] || die_usage "$name: expected a JSON object"
  fi
}

# The batch request body: {"events":[...]} from an array or an {"events":[...]} object, with
# the current time added to events without a timestamp. Needs python3 (or jq); without either
# the events are sent as given (so each one needs its own "timestamp").
batch_body() {
  local text=$1 ts
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
print(json.dumps({"events": events}, ensure_ascii=False))
' "$ts"
  elif have jq; then
    printf '%s' "$text" | jq -c --argjson ts "$ts" '
      (if type == "array" then {events: .} else . end)
      | if type == "object" and (.events | type) == "array"
        then .events |= map(if type == "object" and (has("timestamp") | not)
                            then .timestamp = $ts else . end)
        else error("EVENTS_JSON must be a JSON array of events or {\"events\": [...]}") end'
  elif [[ $text =~ ^[[:space:]]*\[ ]]; then
    printf '{"events":%s}' "$text"
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
    return 1
  fi
  return 0
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
  [ $# -eq 4 ] || die_usage "usage: $PROG publish STREAM SOURCE ENTITY_ID PROPERTIES_JSON"
  local stream=$1 source=$2 entity_id=$3 properties=$4
  require_json_object PROPERTIES_JSON "$properties"
  local body
  body="{\"stream\":\"$(json_escape "$stream")\",\"source\":\"$(json_escape "$source")\""
  body+=",\"timestamp\":$(now_ms),\"payload\":{\"entity_id\":\"$(json_escape "$entity_id")\""
  body+=",\"properties\":$properties}}"
  progress "Publishing event to Flux..."
  call POST /api/events "$body" && emit
}

cmd_batch() {
  [ $# -eq 1 ] || die_usage "usage: $PROG batch EVENTS_JSON"
  local body
  body=$(batch_body "$1" 2>&1) || die_usage "${body:-EVENTS_JSON is not a valid batch}"
  progress "Publishing batch to Flux..."
  call POST /api/events/batch "$body" || return 1
  emit
  if [[ $BODY =~ \"failed\":([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -gt 0 ]; then
    printf 'Error: %s event(s) rejected (see "results")\n' "${BASH_REMATCH[1]}" >&2
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
  require_json_object FILTER_JSON "$1"
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
      require_json_object JSON "$1"
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
    connectors) cmd_connectors "$@" ;;
    admin-config) cmd_admin_config "$@" ;;
    health) cmd_health "$@" ;;
    help | -h | --help) usage ;;
    *) die_usage "unknown command '$command'" ;;
  esac
}

main "$@"
