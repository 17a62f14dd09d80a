"""The import path of the training callbacks and checkpoint files before ``agents/training/`` was a package.

Kept so that code written against it keeps working; new code imports from
:mod:`agents.training.callbacks` (the callbacks) and :mod:`agents.training.checkpoints` (the files).
"""

from agents.training.callbacks import (
    EPISODE_METRICS,
    KL_COLUMN,
    SPEED_COLUMN,
    EvaluationCallback,
    MARALoggingCallback,
    RunCheckpointCallback,
)
from agents.training.checkpoints import (
    CHECKPOINT_DIR,
    MODEL_FILE,
    REPLAY_BUFFER_FILE,
    STATE_FILE,
    file_digest,
    find_checkpoint,
    load_replay_buffer,
    read_checkpoint_state,
    recover_checkpoint,
    save_replay_buffer,
    set_aside_damaged,
    verify_checkpoint,
    write_checkpoint,
)

__all__ = [
    "CHECKPOINT_DIR",
    "EPISODE_METRICS",
    "KL_COLUMN",
    "MODEL_FILE",
    "REPLAY_BUFFER_FILE",
    "SPEED_COLUMN",
    "STATE_FILE",
    "EvaluationCallback",
    "MARALoggingCallback",
    "RunCheckpointCallback",
    "file_digest",
    "find_checkpoint",
    "load_replay_buffer",
    "read_checkpoint_state",
    "recover_checkpoint",
    "save_replay_buffer",
    "set_aside_damaged",
    "verify_checkpoint",
    "write_checkpoint",
]
