#!/usr/bin/env bash
# Retrain a finished search's best configurations on every fold, on a SLURM allocation (Ray as
# in clusters/slurm_tune.sh; search/retrain.py runs the (config, seed, fold) runs as Ray tasks).
# Submit from the repository with the experiment folder (a path every node sees, or s3:// gs://):
#   sbatch clusters/slurm_retrain.sh results/bp4d1
# Further arguments go to search/retrain.py after the defaults below (so they can override them).
#
# name in squeue
#SBATCH --job-name=monet-retrain
# Ray nodes: the head plus one worker per extra node
#SBATCH --nodes=2
# one `ray start` per node
#SBATCH --ntasks-per-node=1
# CPUs per node, given to Ray as --num-cpus
#SBATCH --cpus-per-task=16
# GPUs per node, given to Ray as --num-gpus
#SBATCH --gpus-per-node=2
# all the memory of each node
#SBATCH --mem=0
# wall time
#SBATCH --time=24:00:00
# job log: monet-retrain-<jobid>.out
#SBATCH --output=%x-%j.out
set -euo pipefail

exp_dir=${1:?usage: sbatch clusters/slurm_retrain.sh EXPERIMENT_DIR [retrain.py arguments]}
shift

cd "${MONET_DIR:-${SLURM_SUBMIT_DIR:-.}}"        # the repository (sbatch copies this script away)
source clusters/slurm_ray.sh                      # ray_cluster_up / _down / ray_run_driver
trap ray_cluster_down EXIT                        # stop Ray and remove the token however we exit

ray_cluster_up                                    # exports RAY_ADDRESS (retrain.py connects to it)

# The top 3 configurations x 3 seeds x every fold (the paper's protocol).
ray_run_driver "$PYTHON" search/retrain.py "$exp_dir" --top 3 --seeds 3 --folds all "$@"
