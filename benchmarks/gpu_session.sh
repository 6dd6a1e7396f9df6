#!/usr/bin/env bash
# The GPU checks of a short device session, each section under its own time limit (results are written as
# they come, so a section cut short still reports what it measured). Sections, in the default order:
#   correctness  the fast clipping module on CUDA vs the CPU per-example loop; the bf16 clipping bound
#   smoothnet    throughput of SmoothNet W80D50 on CIFAR-10, every method (the headline row)
#   real         short DP-SGD runs through the trainer on CUDA (real CIFAR-10 subset; fp32 and bf16 autocast)
#   cifar        throughput of the other CIFAR-10 models
#   bf16         throughput under bf16 autocast
#   imagenette   throughput at 224x224
#   scatter      one ScatterNet + linear epoch
#   unfold       the im2col per-example convolution (conv_per_example=unfold) on every model, 32 and 224
#   scaling      SmoothNet W80D50 at physical batch 128, 256, 512
#
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh                 # all sections
#   OUT=/tmp/gpu SECTIONS="correctness unfold" bash benchmarks/gpu_session.sh
#
# Expects, besides the repository: a python3 with torch and CUDA; the missing wheels under .whl/ (opacus,
# dp-accounting and its dm-tree, kymatio and its appdirs/configparser); a DVCLive stand-in under
# .gpu/shim (dvc cannot travel to an offline device machine); a CIFAR-10 subset in image-folder layout
# under .gpu/cifar10-subset (1,250 train + 250 test images per class from the offline mirror).
set -u
OUT=${OUT:-/tmp/gpu-session}
SECTIONS=${SECTIONS:-"correctness smoothnet real cifar bf16 imagenette scatter unfold scaling"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log.txt") 2>&1
stamp() { echo "=== [$(date +%T)] $*"; }
BENCH="python3 benchmarks/throughput.py --device cuda"
CIFAR_MODELS="resnet9 wrn16_4 resnet18 tramer_boneh_cnn papernot_tempered_sigmoid_cnn resnet34 densenet121 efficientnet_b0"
IMAGENETTE_MODELS="smoothnet_w80d50 resnet18 resnet34 densenet121 efficientnet_b0"
CIFAR_BASE="nonprivate nonprivate_cl hooks ours_auto+grouped ours_auto+grouped_cl ours_materialize+grouped ours_materialize+grouped_cl ours_ghost"

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD:$PWD/.gpu/shim"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import torch, opacus; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'opacus', opacus.__version__, torch.cuda.get_device_name())" || exit 1

for section in $SECTIONS; do
  stamp "$section"
  case $section in
  correctness)
    timeout 50 python3 benchmarks/cuda_correctness.py --out "$OUT/cuda_correctness.json" ;;
  smoothnet)
    timeout 90 $BENCH --models smoothnet_w80d50 --batch 128 --repeats 5 \
      --methods $CIFAR_BASE ghost functorch ours_auto+loop ours_materialize+loop --out "$OUT/gpu_smoothnet.json" ;;
  real)
    python3 - <<'PY'
from smoothnet.yamlio import load_yaml  # YAML 1.2 numbers, as DVC reads params.yaml
import yaml
params = load_yaml(open("params.yaml").read())
params["data"] = {"cifar10": {"source": ".gpu/cifar10-subset", "mirror": None, "val_fraction": 0.2,
                              "split_seed": 0, "image_size": 32}}
paper = dict(params["runs"]["cifar10-smoothnet_w80d50-eps7-s0"], epochs=2)
params["runs"] = {"gpu-w80d50-eps7-fp32": paper, "gpu-w80d50-eps7-bf16": dict(paper, autocast_bf16=True)}
params.pop("ablations", None)
yaml.safe_dump(params, open("/tmp/gpu_params.yaml", "w"), sort_keys=False)
PY
    timeout 30 python3 -m smoothnet.cli prepare --dataset cifar10 --params /tmp/gpu_params.yaml \
      --out /tmp/prepared/cifar10 --workers 8 --no-progress
    for run in gpu-w80d50-eps7-fp32 gpu-w80d50-eps7-bf16; do
      timeout 60 python3 -m smoothnet.cli train $run --params /tmp/gpu_params.yaml --data-root /tmp/prepared \
        --runs /tmp/runs --checkpoints /tmp/ckpt --device cuda --no-progress
      cp /tmp/runs/$run/record.json "$OUT/record_${run#gpu-w80d50-eps7-}.json" 2>/dev/null
    done ;;
  cifar)
    timeout 100 $BENCH --batch 128 --repeats 5 --models $CIFAR_MODELS --methods $CIFAR_BASE --out "$OUT/gpu_cifar10.json" ;;
  bf16)
    timeout 60 $BENCH --batch 128 --repeats 5 --amp bf16 --models smoothnet_w80d50 resnet9 wrn16_4 resnet18 densenet121 \
      --methods nonprivate nonprivate_cl ours_auto+grouped ours_auto+grouped_cl ours_materialize+grouped_cl \
      --out "$OUT/gpu_cifar10_bf16.json" ;;
  imagenette)
    timeout 70 $BENCH --image-size 224 --batch 32 --repeats 3 --models $IMAGENETTE_MODELS \
      --methods nonprivate nonprivate_cl hooks ours_auto+grouped ours_auto+grouped_cl ours_materialize+grouped_cl \
      --out "$OUT/gpu_imagenette.json" ;;
  scatter)
    timeout 25 $BENCH --scatter-epoch --scatter-steps 2 --out "$OUT/gpu_scatter.json" ;;
  unfold)
    timeout 80 $BENCH --batch 128 --repeats 5 --models smoothnet_w80d50 $CIFAR_MODELS \
      --methods nonprivate hooks ours_auto+unfold ours_materialize+unfold ours_materialize+unfold_cl \
      --out "$OUT/gpu_unfold_cifar10.json"
    timeout 45 $BENCH --image-size 224 --batch 32 --repeats 3 --models $IMAGENETTE_MODELS \
      --methods nonprivate hooks ours_auto+unfold ours_auto+unfold_cl --out "$OUT/gpu_unfold_imagenette.json" ;;
  scaling)
    for batch in 256 512; do
      timeout 45 $BENCH --models smoothnet_w80d50 --batch $batch --repeats 5 \
        --methods nonprivate hooks ghost ours_materialize+grouped ours_materialize+unfold ours_auto+grouped \
        --out "$OUT/gpu_smoothnet_b$batch.json"
    done ;;
  *) echo "unknown section $section" ;;
  esac
done
stamp "done"
