#!/usr/bin/env bash
# End-to-end demo on a synthetic 3-year survey: synth -> split -> train -> embed -> index -> match
# -> evaluate, then how to open the review page. Every step is resumable: re-running skips
# committed outputs. Usage: scripts/demo.sh [DEMO_DIR]   (make demo runs it in /tmp/reid-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-/tmp/reid-demo}
REID=${REID:-.venv/bin/reid}
mkdir -p "$D"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/7 synth: a 3-year survey of 40 animals (survival, recruits, bursts, unlabelled photos)"
$REID synth --out "$D/archive" --individuals 40 --years 3 --images-per-individual 6 --image-size 96 --seed 7

step "2/7 split: identity-disjoint train/test (bursts and same-day sightings kept together)"
[ -f "$D/split.parquet" ] || $REID split "$D/archive" --out "$D/split.parquet" --kind identity --test-fraction 0.25

step "3/7 train: reid_cnn_s + GeM + 128-d neck, circle loss on individual x flank pairs, Ray Train"
$REID train "$D/archive" --out "$D/model" --split "$D/split.parquet" --config configs/synth-cnn.toml \
  --epochs ${DEMO_EPOCHS:-6} --steps-per-epoch 20

step "4/7 embed: every photo of the archive, Ray Data decode tasks + model actor"
$REID embed "$D/archive" --model "$D/model" --out "$D/embeddings" --num-cpus 2

step "5/7 index: sharded FAISS index, new-individual threshold calibrated on labelled photos"
$REID index "$D/embeddings" --out "$D/index" --num-cpus 2

step "6/7 match: all-vs-all across surveys -> decisions, proposed new individuals, capture history"
$REID match "$D/index" --out "$D/matches" --k 10 --num-cpus 2

step "7/7 evaluate: leave-one-out metrics + HTML report"
$REID evaluate "$D/embeddings" --out "$D/report" --archive "$D/archive"

cat <<MSG

Done. Outputs in $D:
  report        $D/report/report.html   (open in a browser)
  matches       $D/matches/             (decisions, new individuals, capture_history.parquet)
Review candidate matches in the browser:
  $REID serve --index $D/index --model $D/model --archive $D/archive
  then open http://127.0.0.1:8000
MSG
