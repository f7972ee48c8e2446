#!/usr/bin/env bash
# Ray on a SLURM allocation, then a monet-tune search from the head node.
#   sbatch clusters/slurm_tune.sh --dataset bp4d --data-root /shared/BP4D --family monet
#SBATCH --job-name=monet-tune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-task=2
#SBATCH --time=12:00:00
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
port=6379
tmp=/tmp/ray_$USER                      # short: AF_UNIX socket paths are limited
gpus=${SLURM_GPUS_PER_TASK:-0}

# token authentication (kept on): one token for every node and the driver
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/.ray/monet_token_$SLURM_JOB_ID
python -c "import secrets; print(secrets.token_hex(32))" > "$RAY_AUTH_TOKEN_PATH"
chmod 600 "$RAY_AUTH_TOKEN_PATH"

srun --nodes=1 --ntasks=1 -w "$head" ray start --head --block --node-ip-address="$head_ip" \
    --port=$port --temp-dir="$tmp" --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="$gpus" &
sleep 20
for node in "${nodes[@]:1}"; do
    srun --nodes=1 --ntasks=1 -w "$node" ray start --block --address="$head_ip:$port" \
        --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="$gpus" &
done
sleep 20

python search/tune_monet.py --address "$head_ip:$port" --storage-path "$PWD/results" \
    --gpus-per-trial 0.25 "$@"
rm -f "$RAY_AUTH_TOKEN_PATH"
