#!/usr/bin/env bash
# `make dev-session`: a tmux session with three windows:
#   pose_analyzer  the pose service in the foreground (make run-pose-analyzer)
#   gpu_optimizer  the GPU optimizer service in the foreground (make run-gpu-optimizer)
#   monitor  `watch nvidia-smi` where nvidia-smi exists, else `gpu-optimizer top`
# It attaches when run from a terminal; otherwise (CI, scripts) it only creates the
# session and prints how to attach. Running it again never creates a second session.
# Environment: AIML_TMUX_SESSION (session name, default ai-ml-pipeline),
# AIML_TMUX_SOCKET (a tmux server of its own, `tmux -L NAME`; tests use it).
# The services' settings (POSE_*, GPU_OPT_*, DATABASE_URL, AIML_*) reach the windows.
set -euo pipefail

session="${AIML_TMUX_SESSION:-ai-ml-pipeline}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmux_cmd=(tmux)
[ -n "${AIML_TMUX_SOCKET:-}" ] && tmux_cmd=(tmux -L "$AIML_TMUX_SOCKET")
tmux() { command "${tmux_cmd[@]}" "$@"; }

env_args=()
while IFS='=' read -r name _; do
    case "$name" in
        POSE_*|GPU_OPT_*|AIML_*|DATABASE_URL|CUDA_VISIBLE_DEVICES) env_args+=(-e "$name=${!name}") ;;
    esac
done < <(env)

if ! command -v tmux >/dev/null 2>&1; then
    echo "error: tmux is not installed (Debian/Ubuntu: sudo apt-get install tmux)" >&2
    exit 1
fi

if tmux has-session -t "=$session" 2>/dev/null; then
    echo "tmux session '$session' already exists"
else
    if command -v nvidia-smi >/dev/null 2>&1; then
        monitor="watch -n 1 nvidia-smi"
    else
        monitor="make --no-print-directory -C '$repo' gpu-top"
    fi
    tmux new-session -d -s "$session" -n pose_analyzer -c "$repo" "${env_args[@]}"
    # Keep a window open after its command ends, so a crash stays readable.
    tmux set-option -t "$session" remain-on-exit on >/dev/null
    tmux send-keys -t "=$session:pose_analyzer" "make --no-print-directory run-pose-analyzer" C-m
    tmux new-window -t "=$session" -n gpu_optimizer -c "$repo" "${env_args[@]}"
    tmux send-keys -t "=$session:gpu_optimizer" "make --no-print-directory run-gpu-optimizer" C-m
    tmux new-window -t "=$session" -n monitor -c "$repo" "${env_args[@]}"
    tmux send-keys -t "=$session:monitor" "$monitor" C-m
    tmux select-window -t "=$session:pose_analyzer"
    echo "tmux session '$session' created with windows: pose_analyzer, gpu_optimizer, monitor"
fi

if [ -t 0 ] && [ -t 1 ] && [ -z "${TMUX:-}" ]; then
    exec tmux attach-session -t "=$session"
fi
echo "attach with: ${tmux_cmd[*]} attach -t $session   (stop: ${tmux_cmd[*]} kill-session -t $session)"
