#!/usr/bin/env bash
# A monet-tune search on a SLURM allocation: Ray head on the first node, one Ray worker per
# other node, then the search from the head node with --address. Submit from the repository:
#   sbatch clusters/slurm_tune.sh --dataset bp4d --data-root /shared/BP4D --family monet \
#       --gpus-per-trial 0.25 --name bp4d1
# All arguments go to search/tune_monet.py. Activate the environment that has monet-tune and
# ray==2.60.0 before sbatch (the job inherits it), or set PYTHON. Every node must see this
# folder and the data. Resume a search that was stopped: the same command plus --resume.
#
# name in squeue
#SBATCH --job-name=monet-tune
# Ray nodes: the head plus one worker per extra node
#SBATCH --nodes=2
# one `ray start` per node; Ray runs the trials inside it
#SBATCH --ntasks-per-node=1
# CPUs per node, given to Ray as --num-cpus
#SBATCH --cpus-per-task=16
# GPUs per node, given to Ray as --num-gpus (SLURM_GPUS_ON_NODE)
#SBATCH --gpus-per-node=2
# all the memory of each node (Ray's object store lives there)
#SBATCH --mem=0
# wall time; resume with --resume in a new job
#SBATCH --time=12:00:00
# 5 min before the time limit, SIGTERM to this script only (B:): it asks the search to save
# its state and stop (see ray_run_driver in clusters/slurm_ray.sh)
#SBATCH --signal=B:TERM@300
# job log: monet-tune-<jobid>.out
#SBATCH --output=%x-%j.out
set -euo pipefail

cd "${MONET_DIR:-${SLURM_SUBMIT_DIR:-.}}"        # the repository (sbatch copies this script away)
source clusters/slurm_ray.sh                      # ray_cluster_up / _down / ray_run_driver
trap ray_cluster_down EXIT                        # stop Ray and remove the token however we exit

ray_cluster_up                                    # exports RAY_ADDRESS, RAY_AUTH_MODE, token path

# Results on shared storage every node sees (or s3:// / gs://); arguments given win.
ray_run_driver "$PYTHON" search/tune_monet.py --address "$RAY_ADDRESS" \
    --storage-path "${MONET_STORAGE:-$PWD/results}" "$@"
