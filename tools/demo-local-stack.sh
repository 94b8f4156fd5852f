#!/usr/bin/env bash
# The story `make demo` tells, in a scratch clone: a stack runs on this machine, takes traffic, a
# canary commit changes its split, Prometheus shows the split per version, a drifted feature fires
# an alert that Alertmanager delivers to the local mailbox, and everything stops.
# Usage: tools/demo-local-stack.sh BIN REPO REMOTE MODEL VERSION STACK
set -euo pipefail
bin=$1 repo=$2 remote=$3 model=$4 version=$5 stack=$6
# Demo timings: scrape and evaluate every 2 s, alerts after 6 s instead of minutes.
timing=(--scrape-interval=2s --evaluation-interval=2s --alert-for=6s --group-wait=2s --group-interval=5s
        --server-arg=--drift-interval-s=2 --server-arg=--drift-window=500)
modelctl() { "$bin/modelctl" -C "$repo" "$@"; }
step() { printf '\n== %s\n' "$*"; }
trap 'modelctl down --stack "$stack" >/dev/null 2>&1 || true' EXIT

step "modelctl up --stack $stack: servers, nginx gateway, Prometheus, Alertmanager, from the rendered objects"
addresses=$repo/.modelctl/up.json
modelctl up --stack "$stack" --remote "$remote" "${timing[@]}" --json | tee "$addresses"
field() { "$bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$addresses" "$1"; }
step "modelctl traffic: held-out rows through the gateway"
modelctl traffic --stack "$stack" --model "$model" --requests 600 --users 60

step "a canary commit: modelctl canary $model $version --stack $stack"
modelctl canary "$model" "$version" --stack "$stack"
git -C "$repo" log -1 --stat --format='%h %s'
{ modelctl plan --base HEAD~1 --stack "$stack" | head -20; test "${PIPESTATUS[0]}" -eq 2; }
step "modelctl up again: only the routes change"
modelctl up --stack "$stack" --remote "$remote" "${timing[@]}"
modelctl traffic --stack "$stack" --model "$model" --requests 1000 --users 200
step "the split per version, as Prometheus scraped it from the servers"
sleep 3  # one scrape after the last request
curl -s "$(field prometheus)/api/v1/query" \
  --data-urlencode "query=sum by (version) (model_requests_total{model=\"$model\",code=\"200\"})" |
  "$bin/python" -c '
import json, sys
rows = json.load(sys.stdin)["data"]["result"]
total = sum(float(r["value"][1]) for r in rows)
for r in sorted(rows, key=lambda r: r["metric"]["version"]):
    print(f"  {r[\"metric\"][\"version\"]:<10} {float(r[\"value\"][1]):>6.0f} requests  {float(r[\"value\"][1]) / total:6.1%}")'

step "a fault: the amount feature drifts (+300 EUR on every request)"
mailbox=$(field mailbox)
modelctl traffic --stack "$stack" --model "$model" --requests 900 --users 200 --shift amount=300
printf 'waiting for the drift alert to reach the mailbox'
for _ in $(seq 60); do
  found=$(grep -l ModelFeatureDrift "$mailbox"/* 2>/dev/null | head -1 || true)
  [ -n "$found" ] && break
  printf '.'; sleep 1
done
echo
[ -n "$found" ] || { echo "no drift alert arrived within 60 s" >&2; exit 1; }
echo "delivered: $found"
"$bin/python" -c '
import json, sys
message = json.load(open(sys.argv[1]))
for item in message.get("attachments", [message]):
    print(item.get("title", ""))
    print(item.get("text", json.dumps(item)[:600]))' "$found"

step "modelctl down: everything stops"
modelctl down --stack "$stack"
trap - EXIT
