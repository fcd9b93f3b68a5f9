#!/bin/sh
# claim-gpu.sh COMMAND...: pin this Ray worker to one GPU that no other worker holds, then exec COMMAND.
#
# Why: `docker compose up --scale ray-worker=N` starts N copies of one service, and Docker cannot hand each
# copy a different GPU (a `count: 1` reservation gives every replica the same first GPU;
# docker/compose#11863). So each worker reserves all of the host's GPUs and takes the first free one here:
# it holds an exclusive flock on $FPA_GPU_CLAIMS/gpu-<index>.lock, on a volume every worker shares, for as
# long as it runs. The lock belongs to the exec'd process (ray start --block), so a worker that stops or
# dies frees its GPU; more workers than GPUs exit with a message instead of sharing one.
set -eu
claims="${FPA_GPU_CLAIMS:-/var/lib/fpa/gpu-claims}"
mkdir -p "$claims"
# nvidia-smi numbers the GPUs in PCI bus order; make CUDA (and so torch) number them the same way.
export CUDA_DEVICE_ORDER=PCI_BUS_ID
indexes=$(nvidia-smi --query-gpu=index --format=csv,noheader)
for index in $indexes; do
    exec 9>"$claims/gpu-$index.lock"
    if flock --nonblock 9; then
        export CUDA_VISIBLE_DEVICES="$index"
        echo "claim-gpu: this worker runs on GPU $index" >&2
        exec "$@"
    fi
    exec 9>&-
done
echo "claim-gpu: all $(echo "$indexes" | wc -w) GPU(s) are held by other workers:" \
     "scale ray-worker to at most that many" >&2
exit 1
