#!/usr/bin/env bash
# Prepare, here, what a GPU session needs to run benchmarks/gpu_check.py with no package registry:
#   .device/wheels/  wheels of what the device image (Python 3.12, torch 2.11, transformers 5.17) lacks:
#                    gymnasium, stable-baselines3 and their small deps, simpy, optuna and its deps
#                    (never torch or transformers: the image's own are used)
#   .device/traces/  traces recorded with the default pair (part 4 of the check), a few MB
# then prints the size, the `carry` list and the one-line device command. `.device/` is git-ignored.
#
#   benchmarks/device_wheels.sh                   # records fresh traces with the default pair (~2 min)
#   TRACES=runs/default/traces benchmarks/device_wheels.sh   # or copies an existing trace folder
#
# Run it under the heavy-job lock when it records: flock /tmp/ltd_heavy.lock benchmarks/device_wheels.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
DEST=.device
LIMIT_MIB=48
# the versions pyproject.toml pins; --no-deps: exactly these, nothing pulled in behind them
WHEELS=(
  gymnasium==1.4.0 farama-notifications cloudpickle==3.1.3 stable-baselines3==2.9.2 simpy==4.1.2
  optuna==5.0.0 alembic==1.20.1 colorlog==6.12.0 sqlalchemy==2.1.9 mako
)

rm -rf "$DEST/wheels.tmp"
mkdir -p "$DEST/wheels.tmp"
"$PY" -m pip download --quiet --no-deps --dest "$DEST/wheels.tmp" \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any --only-binary=:all: "${WHEELS[@]}"
rm -rf "$DEST/wheels"
mv "$DEST/wheels.tmp" "$DEST/wheels"

if [[ -n "${TRACES:-}" ]]; then
  [[ -f "$TRACES/manifest.json" ]] || { echo "error: no trace folder at $TRACES" >&2; exit 2; }
  rm -rf "$DEST/traces" && cp -r "$TRACES" "$DEST/traces"
elif [[ ! -f "$DEST/traces/manifest.json" ]]; then
  # 12 short prompts, 64 tokens each, with the default pair (SmolLM2-135M + its EAGLE-3 head)
  cat > "$DEST/prompts.txt" <<'EOF'
Write a Python function that checks whether a string is a palindrome.
Explain in three sentences why the sky is blue.
List five tips for writing clear technical documentation.
Write a Python function that returns the n-th Fibonacci number.
Summarise the plot of Romeo and Juliet in one paragraph.
Write a SQL query that counts the orders of each customer.
What are the main differences between a list and a tuple in Python?
Give three reasons to write unit tests.
Write a short poem about the sea.
Explain what a hash table is to a beginner.
Write a bash command that finds the ten largest files in a folder.
Describe how a bicycle gear system works.
EOF
  HF_HUB_OFFLINE=1 "$PY" -m realrun.cli trace --prompts "$DEST/prompts.txt" --out "$DEST/traces" \
    --max-new-tokens 64 --no-progress
fi

size_kib=$(du -sk "$DEST/wheels" "$DEST/traces" | awk '{s += $1} END {print s}')
wheels_kib=$(du -sk "$DEST/wheels" | awk '{print $1}')
echo "wheels: $(ls "$DEST/wheels" | wc -l) files, $((wheels_kib / 1024)) MiB; wheels + traces: $((size_kib / 1024)) MiB (limit $LIMIT_MIB MiB)"
if (( size_kib > LIMIT_MIB * 1024 )); then
  echo "error: .device/ is over $LIMIT_MIB MiB" >&2
  exit 1
fi
names=$(ls "$DEST/wheels" | sed -E 's/-[0-9][^-]*-.*\.whl$//' | tr '\n' ' ')
echo "carry: [\".device\"]"
echo "device command:"
echo "export HF_HUB_OFFLINE=1 && python3 -m pip install -q --no-index --no-deps --find-links .device/wheels --target /tmp/ltdw ${names% } && PYTHONPATH=/tmp/ltdw python3 benchmarks/gpu_check.py --device cuda --out \$OUT/gpu --traces .device/traces"
