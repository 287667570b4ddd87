#!/bin/bash
# Multi-node DDP training with torchrun: run this on every node, with NODE_RANK 0, 1, ...
# and HOST0 the first node's address. All processes share one run directory (RUN), which
# must be on a filesystem every node sees.
#   NODE_RANK=0 HOST0=10.0.0.1 scripts/torchrun.sh           # on the first node
#   NODE_RANK=1 HOST0=10.0.0.1 scripts/torchrun.sh           # on the second
#   NNODES=1 NPROC=2 TRAINER=ddp_cpu scripts/torchrun.sh debug=fast   # try it on a laptop
set -euo pipefail
NNODES=${NNODES:-2}
NPROC=${NPROC:-4}                 # processes (GPUs) per node = trainer.devices
TRAINER=${TRAINER:-ddp}
EXPERIMENT=${EXPERIMENT:-resnet_cnn}
RUN=${RUN:-logs/$EXPERIMENT/runs/torchrun-${RUN_ID:-1}}
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$NPROC" \
    --node-rank="${NODE_RANK:-0}" --rdzv-backend=c10d \
    --rdzv-endpoint="${HOST0:-127.0.0.1}:${PORT:-29500}" --rdzv-id="gradwatch-${RUN_ID:-1}" \
    -m gradwatch.train experiment="$EXPERIMENT" trainer="$TRAINER" \
    trainer.num_nodes="$NNODES" trainer.devices="$NPROC" hydra.run.dir="$RUN" "$@"
