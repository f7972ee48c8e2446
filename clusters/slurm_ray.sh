# Ray on a SLURM allocation: sourced by clusters/slurm_tune.sh and clusters/slurm_retrain.sh.
#
# ray_cluster_up starts the head on the first node of the allocation and one worker on every
# other node, each with `srun ... ray start --block` (the step lives as long as the job), each
# with explicit --num-cpus/--num-gpus (Ray would otherwise count the whole machine, not what
# SLURM gave us), a short --temp-dir (Ray's AF_UNIX socket paths must stay under 107 bytes) and
# token authentication on, with a token made for this job. It exports RAY_ADDRESS for the
# driver and waits until every node has joined. ray_cluster_down (an EXIT trap) stops the steps
# and removes the token.
#
# Token: Ray 2.60 turns token authentication on only with RAY_AUTH_MODE=token, and then reads
# the token from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. We
# never write into ~/.ray: the token is made in a private per-job folder on the batch node
# (head and driver read it through RAY_AUTH_TOKEN_PATH) and reaches the other nodes' `srun`
# steps through their environment (RAY_AUTH_TOKEN, never on a command line, so `ps` and
# `scontrol show step` do not show it). The folder is removed when the job script exits.
#
# Settings (environment variables; the defaults suit most sites):
#   MONET_HEAD_IP     address the other nodes reach the head at (default: the batch node's first
#                     address from `hostname --ip-address`; set it to pick the fast network)
#   MONET_RAY_PORT    the head's GCS port (default 6379)
#   MONET_RAY_TMP     Ray's temp dir on every node (default /tmp/ray_$SLURM_JOB_ID: short)
#   MONET_RAY_ARGS    extra arguments for every `ray start`, e.g. "--object-manager-port=8076"
#   MONET_RAY_HEAD_ARGS  extra arguments for the head's only, e.g. "--include-dashboard=false"
#   MONET_RAY_WAIT    seconds to wait for every node to join (default 300)
#   MONET_TOKEN_DIR   where the per-job token folder is made (default ${TMPDIR:-/tmp})
#   PYTHON            the Python that has Ray and monet-tune (default: python on PATH)

ray_cluster_up() {
    PYTHON=${PYTHON:-python}
    local ray_bin
    ray_bin=$(dirname "$(command -v "$PYTHON")")/ray     # the `ray` next to that Python
    [[ -x $ray_bin ]] || ray_bin=ray

    # The allocation's nodes, the first one is the head (the batch script runs there too).
    mapfile -t _ray_nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    if ((${#_ray_nodes[@]} == 0)); then
        echo "no nodes in SLURM_JOB_NODELIST='${SLURM_JOB_NODELIST:-}'" >&2
        return 1
    fi
    local head=${_ray_nodes[0]}
    local head_ip=${MONET_HEAD_IP:-$(hostname --ip-address | awk '{print $1}')}
    if [[ $head_ip == 127.* && ${#_ray_nodes[@]} -gt 1 ]]; then    # /etc/hosts maps us to loopback
        echo "the head's address is $head_ip: set MONET_HEAD_IP to one the other nodes reach" >&2
        return 1
    fi
    local port=${MONET_RAY_PORT:-6379}
    local tmp=${MONET_RAY_TMP:-/tmp/ray_${SLURM_JOB_ID}}
    # What SLURM gave each node: CPUs of our one task per node, GPUs on the node (0 if none).
    local cpus=${SLURM_CPUS_PER_TASK:-1}
    local gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_TASK:-0}}
    local extra=() head_extra=()
    read -r -a extra <<< "${MONET_RAY_ARGS:-}"
    read -r -a head_extra <<< "${MONET_RAY_HEAD_ARGS:-}"

    # One token per job, in a folder only we can read; removed by ray_cluster_down.
    _ray_token_dir=$(umask 077 && mktemp -d "${MONET_TOKEN_DIR:-${TMPDIR:-/tmp}}/monet-ray-${SLURM_JOB_ID}.XXXXXX")
    (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' > "$_ray_token_dir/token")
    export RAY_AUTH_MODE=token                       # off unless set: Ray 2.60 reads only this
    export RAY_AUTH_TOKEN_PATH=$_ray_token_dir/token # head and driver (this node)
    _ray_steps=()

    # Head: GCS, dashboard (loopback only, Ray's default), and a share of the trials.
    srun --nodes=1 --ntasks=1 --cpus-per-task="$cpus" --export=ALL -w "$head" \
        "$ray_bin" start --head --block --node-ip-address="$head_ip" --port="$port" \
        --temp-dir="$tmp" --num-cpus="$cpus" --num-gpus="$gpus" "${extra[@]}" "${head_extra[@]}" &
    _ray_steps+=($!)

    # Workers: the token travels in the step's environment, not as a file on their disks.
    local node
    for node in "${_ray_nodes[@]:1}"; do
        (
            export RAY_AUTH_TOKEN=$(< "$RAY_AUTH_TOKEN_PATH")
            unset RAY_AUTH_TOKEN_PATH                    # that file is on this node only
            exec srun --nodes=1 --ntasks=1 --cpus-per-task="$cpus" --export=ALL -w "$node" \
                "$ray_bin" start --block --address="$head_ip:$port" \
                --temp-dir="$tmp" --num-cpus="$cpus" --num-gpus="$gpus" "${extra[@]}"
        ) &
        _ray_steps+=($!)
    done

    export RAY_ADDRESS=$head_ip:$port                # the driver connects here
    _ray_wait_for_nodes "${#_ray_nodes[@]}" "${MONET_RAY_WAIT:-300}"
}

# Wait until N nodes are alive in the cluster at $RAY_ADDRESS (or give up after T seconds).
_ray_wait_for_nodes() {
    local want=$1 deadline=$((SECONDS + $2)) alive=0
    while ((SECONDS < deadline)); do
        local pid
        for pid in "${_ray_steps[@]}"; do               # a step that died will not come back
            kill -0 "$pid" 2>/dev/null || { echo "ray start step $pid exited" >&2; return 1; }
        done
        # the GCS port first (cheap), then count the nodes with a real, authenticated client
        if ! (exec 3<>"/dev/tcp/${RAY_ADDRESS%:*}/${RAY_ADDRESS##*:}") 2>/dev/null; then
            sleep 2
            continue
        fi
        alive=$("$PYTHON" - 2>/dev/null <<'EOF' || true
import ray
ray.init(logging_level="ERROR", log_to_driver=False)       # RAY_ADDRESS, with the token
print(sum(n["Alive"] for n in ray.nodes()))
EOF
)
        alive=${alive##*$'\n'}
        if [[ $alive == "$want" ]]; then
            echo "Ray cluster up: $want node(s) at $RAY_ADDRESS"
            return 0
        fi
        sleep 5
    done
    echo "only ${alive:-0} of $want Ray nodes joined within $2 s" >&2
    return 1
}

# Stop the `ray start --block` steps (srun passes the signal to them) and remove the token.
ray_cluster_down() {
    local pid
    for pid in "${_ray_steps[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${_ray_steps[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    [[ -n ${_ray_token_dir:-} ]] && rm -rf -- "$_ray_token_dir"
    _ray_steps=()
    return 0
}

# Run a driver command in the background and wait for it, so that a signal to the batch shell
# (`scancel --batch --signal=TERM`, or the time limit's --signal=B:TERM) reaches the trap at
# once. The trap passes it on as SIGUSR1, on which Ray Tune saves the experiment and stops (then
# --resume continues). Not SIGINT: bash starts background commands with SIGINT ignored.
ray_run_driver() {
    "$@" &
    _ray_driver=$!
    trap 'kill -USR1 "$_ray_driver" 2>/dev/null' TERM INT
    local rc=0
    wait "$_ray_driver" || rc=$?
    while kill -0 "$_ray_driver" 2>/dev/null; do  # interrupted by a signal: wait for its exit
        wait "$_ray_driver" || rc=$?
    done
    trap - TERM INT
    return "$rc"
}
