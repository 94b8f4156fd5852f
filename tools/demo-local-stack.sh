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
addresses=$(mktemp)
trap 'modelctl down --stack "$stack" >/dev/null 2>&1 || true; rm -f "$addresses"' EXIT

step "modelctl up --stack $stack: servers, nginx gateway, Prometheus, Alertmanager, from the rendered objects"
modelctl up --stack "$stack" --remote "$remote" "${timing[@]}" --json | tee "$addresses"
field() { "$bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$addresses" "$1"; }
step "modelctl traffic: held-out rows through the gateway"
modelctl traffic --stack "$stack" --model "$model" --requests 600 --users 60

step "a canary commit: modelctl canary $model $version --stack $stack"
modelctl canary "$model" "$version" --stack "$stack"
git -C "$repo" log -1 --stat --format='%h %s'
modelctl plan --base HEAD~1 --stack "$stack" || [ $? -eq 2 ]  # 2: the plan has changes
step "modelctl up again: only the routes change"
modelctl up --stack "$stack" --remote "$remote" "${timing[@]}"
sleep 3  # one scrape before the new traffic
before=$(date +%s)
modelctl traffic --stack "$stack" --model "$model" --requests 1000 --users 200
sleep 3  # one scrape after it
step "the split since the canary commit, as Prometheus scraped it from the servers"
"$bin/python" - "$(field prometheus)" "$model" "$before" "$(date +%s)" <<'PY'
import sys
import httpx

prometheus, model, start, end = sys.argv[1:]
query = f'sum by (version) (model_requests_total{{model="{model}",code="200"}})'

def counts(at: str) -> dict[str, float]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": query, "time": at}).json()
    return {r["metric"]["version"]: float(r["value"][1]) for r in answer["data"]["result"]}

first, last = counts(start), counts(end)
grown = {version: last[version] - first.get(version, 0.0) for version in sorted(last)}
total = sum(grown.values())
for version, count in grown.items():
    print(f"  {version:<10}{count:>6.0f} requests  {count / total:6.1%}")
PY

step "a fault: the amount feature drifts (+300 EUR on every request)"
mailbox=$(field mailbox)
modelctl traffic --stack "$stack" --model "$model" --requests 900 --users 200 --shift amount=300
printf 'waiting for the drift alert on amount to reach the mailbox'
for _ in $(seq 60); do
  found=$(grep -l 'ModelFeatureDrift[^"]*(amount ' "$mailbox"/* 2>/dev/null | head -1 || true)
  [ -n "$found" ] && break
  printf '.'; sleep 1
done
echo
[ -n "$found" ] || { echo "no drift alert on amount arrived within 60 s" >&2; exit 1; }
ls "$mailbox"
echo "delivered: $found"
"$bin/python" -c '
import json, sys
message = json.load(open(sys.argv[1]))
print(json.dumps(message, indent=2)[:1500])' "$found"

step "modelctl down: everything stops"
modelctl down --stack "$stack"
