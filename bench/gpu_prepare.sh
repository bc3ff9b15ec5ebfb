#!/usr/bin/env bash
# Build gpu_carry/: what travels beside the checkout to a GPU machine for bench/gpu_run.sh.
#
#   bash bench/gpu_prepare.sh   # in the checkout the device tool sends, on a machine with PyPI
#
# - gpu_carry/wheels/: cp312 manylinux x86-64 wheels of what the GPU image lacks (it has torch,
#   timm, torchvision, safetensors, click, rich, scipy, anyio, h11, MarkupSafe): the catalog's
#   SQLAlchemy + Alembic + Mako, and the server's FastAPI stack. --no-deps: each one is named.
# - gpu_carry/deit_tiny_patch16_224.safetensors: the real DeiT-tiny weights, if ../shared/assets
#   has them (the suite uses random weights for speed; mgr train/serve runs can use these).
# The suite itself needs no data set: its images are generated.
# Stays well under the device tool's 64 MiB for the whole travelling tree (about 33 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=gpu_carry
PY=${PYTHON:-python3}
rm -rf "$CARRY"
mkdir -p "$CARRY/wheels"
# Versions as in the development venv, so what is measured is what is tested.
PKGS=(
  "SQLAlchemy==2.1.9" "alembic==1.20.1" "Mako==1.4.3"
  "fastapi==0.165.0" "starlette==1.10.0" "pydantic==2.14.4" "pydantic_core==2.50.5"
  "annotated-types==0.8.0" "annotated-doc==0.0.7" "typing-inspection==0.4.5"
  "uvicorn==0.55.0" "python-multipart==0.0.34" "swagger-ui-bundle==1.1.0"
  "typing_extensions==4.16.0"  # pydantic needs a recent one; the image's may be older
)
PLAT=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  PLAT+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" -d "$CARRY/wheels" "${PKGS[@]}"
# ../shared/assets beside the main checkout; a worktree one level deeper looks one more up.
for ASSETS in ${ASSETS_DIR:-} ../shared/assets ../../shared/assets; do
  if [ -f "$ASSETS/deit_tiny_patch16_224.safetensors" ]; then
    cp "$ASSETS/deit_tiny_patch16_224.safetensors" "$CARRY/"
    break
  fi
done
du -sh "$CARRY"
ls "$CARRY" "$CARRY/wheels"
