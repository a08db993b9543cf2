#!/bin/bash
# ppo_dist on this machine, without SLURM: one training process per GPU.
#
#   bash slurm/launch_single_node.sh                                   # all GPUs, DDP, default config
#   NUM_PROCESSES=4 ACCEL_CONFIG=accelerate_configs/zero3.yaml bash slurm/launch_single_node.sh --train.total_steps 500
#
# Arguments are passed to train.py. Every variable below can be set on the command line as above.
#
# Stopping: Ctrl-C, SIGTERM or SIGUSR1 to this script make the trainers finish the current PPO step,
# save a checkpoint and stop; the script then exits with status 75 (EX_TEMPFAIL, as train.py does).
# Running the same command again continues from the newest checkpoint (--checkpoint.resume auto).
# With MAX_RESTARTS > 0, SIGUSR1 instead means "checkpoint, then carry on": the script launches the
# run again, resuming from that checkpoint (for a watchdog or spot-instance agent that sends USR1).
# Ctrl-C and SIGTERM always stop.

# ---- user settings -------------------------------------------------------------------------------
NUM_PROCESSES="${NUM_PROCESSES:-$(nvidia-smi -L 2>/dev/null | wc -l)}"   # default: one per visible GPU
ACCEL_CONFIG="${ACCEL_CONFIG:-}"           # accelerate_configs/<mode>.yaml (ddp, zero1/2/3, ...);
                                           # empty = plain flags: --multi_gpu for more than 1 process
RUN_CONFIG="${RUN_CONFIG:-configs/default.yaml}"  # train.py --config; empty = built-in defaults
MAX_RESTARTS="${MAX_RESTARTS:-0}"          # relaunches after a SIGUSR1 stop; 0 = stop and exit 75
PYTHON="${PYTHON:-python3}"                # python of the environment (accelerate runs as "$PYTHON -m accelerate...")
TRAIN_SCRIPT="${TRAIN_SCRIPT:-train.py}"
# Set ACCELERATE_USE_CPU=true to train on CPU processes (gloo) on a machine without GPUs.
# --------------------------------------------------------------------------------------------------

set -uo pipefail
(( NUM_PROCESSES > 0 )) || NUM_PROCESSES=1
LAUNCH_ARGS=(--num_machines 1 --num_processes "$NUM_PROCESSES")
if [[ -n "$ACCEL_CONFIG" ]]; then LAUNCH_ARGS+=(--config_file "$ACCEL_CONFIG"); elif (( NUM_PROCESSES > 1 )); then LAUNCH_ARGS+=(--multi_gpu); fi
TRAIN_ARGS=(--checkpoint.resume auto)      # a second run (or a relaunch) continues from the newest checkpoint
[[ -n "$RUN_CONFIG" ]] && TRAIN_ARGS=(--config "$RUN_CONFIG" "${TRAIN_ARGS[@]}")

# The launcher (`accelerate launch`) would die of USR1 and, on INT/TERM, kill its children after a
# grace period, possibly mid-checkpoint. So it runs in its own session (setsid: Ctrl-C reaches this
# script only) and the script passes every stop signal to the trainers, the launcher's children, as
# USR1. `accelerate launch` reports the trainers' exit code 75 as 1, so a run that this script asked
# to stop and that ended with a non-zero status counts as stopped with a checkpoint.
STOP_SIGNAL=""
TRAIN_PID=""
# shellcheck disable=SC2317  # invoked from the traps below
stop_training() {
    STOP_SIGNAL="$1"
    echo "[ppo_dist] got SIG$1: the trainers checkpoint and stop after the current step"
    [[ -n "$TRAIN_PID" ]] && for pid in $(pgrep -P "$TRAIN_PID"); do kill -USR1 "$pid" 2>/dev/null; done
}
trap 'stop_training USR1' USR1
trap 'stop_training TERM' TERM
trap 'stop_training INT' INT

RESTARTS=0
while true; do
    setsid "$PYTHON" -m accelerate.commands.launch "${LAUNCH_ARGS[@]}" "$TRAIN_SCRIPT" "${TRAIN_ARGS[@]}" "$@" &
    TRAIN_PID=$!
    while kill -0 "$TRAIN_PID" 2>/dev/null; do wait "$TRAIN_PID"; done   # wait returns early on a trap
    wait "$TRAIN_PID"
    STATUS=$?
    TRAIN_PID=""
    if [[ -z "$STOP_SIGNAL" ]] || (( STATUS == 0 )); then exit "$STATUS"; fi
    if [[ "$STOP_SIGNAL" == USR1 ]] && (( RESTARTS < MAX_RESTARTS )); then
        RESTARTS=$((RESTARTS + 1))
        STOP_SIGNAL=""
        echo "[ppo_dist] relaunching ($RESTARTS of $MAX_RESTARTS); resuming from the newest checkpoint"
        continue
    fi
    echo "[ppo_dist] stopped with a checkpoint; run the same command again to resume"
    exit 75
done
