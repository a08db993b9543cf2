#!/bin/bash
# ppo_dist on this machine, without SLURM: one training process per GPU.
#
#   bash slurm/launch_single_node.sh                                   # all GPUs, DDP, default config
#   NUM_PROCESSES=4 ACCEL_CONFIG=accelerate_configs/zero3.yaml bash slurm/launch_single_node.sh --train.total_steps 500
#
# Arguments are passed to train.py. Ctrl-C, SIGTERM or SIGUSR1 make the trainers finish the current
# PPO step, save a checkpoint and stop; the script then exits with status 75. Running it again
# continues from the newest checkpoint (--checkpoint.resume auto). CPU only: ACCELERATE_USE_CPU=true.

# ---- user settings -------------------------------------------------------------------------------
NUM_PROCESSES="${NUM_PROCESSES:-$(nvidia-smi -L 2>/dev/null | wc -l)}"   # default: one per visible GPU
ACCEL_CONFIG="${ACCEL_CONFIG:-}"           # accelerate_configs/<mode>.yaml; empty = plain DDP
RUN_CONFIG="${RUN_CONFIG:-configs/default.yaml}"  # train.py --config; empty = built-in defaults
ACCELERATE="${ACCELERATE:-accelerate}"
# --------------------------------------------------------------------------------------------------

set -uo pipefail
(( NUM_PROCESSES > 0 )) || NUM_PROCESSES=1
LAUNCH_ARGS=(--num_machines 1 --num_processes "$NUM_PROCESSES")
if [[ -n "$ACCEL_CONFIG" ]]; then LAUNCH_ARGS+=(--config_file "$ACCEL_CONFIG"); elif (( NUM_PROCESSES > 1 )); then LAUNCH_ARGS+=(--multi_gpu); fi
TRAIN_ARGS=(--checkpoint.resume auto)
[[ -n "$RUN_CONFIG" ]] && TRAIN_ARGS=(--config "$RUN_CONFIG" "${TRAIN_ARGS[@]}")

STOPPED=0
TRAIN_PID=""
# shellcheck disable=SC2317  # invoked from the trap below
stop_training() {
    STOPPED=1
    echo "[ppo_dist] got a stop signal: the trainers checkpoint and stop after the current step"
    [[ -n "$TRAIN_PID" ]] && for pid in $(pgrep -P "$TRAIN_PID"); do kill -USR1 "$pid" 2>/dev/null; done
}
trap stop_training USR1 TERM INT

# setsid: Ctrl-C reaches this script only, which passes it on as USR1 (the launcher would die of it).
setsid "$ACCELERATE" launch "${LAUNCH_ARGS[@]}" train.py "${TRAIN_ARGS[@]}" "$@" &
TRAIN_PID=$!
while kill -0 "$TRAIN_PID" 2>/dev/null; do wait "$TRAIN_PID"; done
wait "$TRAIN_PID"
STATUS=$?
if (( STOPPED && STATUS != 0 )); then
    echo "[ppo_dist] stopped with a checkpoint; run the same command again to resume"
    exit 75
fi
exit "$STATUS"
