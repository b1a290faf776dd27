"""Imported once by the forkserver: torch, the library, and one tiny fake-tensor step.

The first estimate in a fresh interpreter spends seconds on lazy imports
(sympy, dynamo, fake-tensor machinery, transformers for hf: specs). Paying
them once here, before the forkserver forks, makes every job's process start
warm. The warm-up step is inference only: a backward pass would start autograd's threads, which a
forked child cannot use. Torch is held to one thread while warming so no
thread pool exists at fork time; each worker restores the count (see
:func:`gpu_optimizer.jobs.worker.child_main`).
"""

from __future__ import annotations

import logging

import torch

from gpu_optimizer.jobs import worker

THREADS = torch.get_num_threads()


# A one-layer GPT-2 config: imports transformers and its model code once, so hf: jobs
# start warm too (the import alone is seconds).
HF_WARM_UP = "hf:gpt2?n_layer=1&n_embd=32&n_head=2&vocab_size=64&n_positions=16"


def _warm_up() -> None:
    torch.set_num_threads(1)
    try:
        worker.estimate("squeezenet1_1", (3, 224, 224), 1, mode="infer")
        worker.estimate(HF_WARM_UP, (8,), 1, mode="infer")
    except Exception:
        logging.getLogger(__name__).exception("worker warm-up failed; jobs will start cold")


_warm_up()
