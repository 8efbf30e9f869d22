"""Test-only, put on PYTHONPATH for one lmms-eval run: a real interruption at a chosen point.

With `JOURNAL_TEST_KILL_AFTER_BATCHES=k`, each process SIGKILLs itself as it starts its batch k+1
of generation (as a preempted node would die: no exception handler, no cleanup). Processes of a
distributed run first wait for each other, so every rank has finished exactly k batches.
"""

import os

_KILL_AFTER = os.environ.get("JOURNAL_TEST_KILL_AFTER_BATCHES")
if _KILL_AFTER:
    import itertools
    import signal

    import torch.distributed
    from transformers.generation.utils import GenerationMixin

    _generate = GenerationMixin.generate
    _batches = itertools.count()

    def _generate_or_die(self, *args, **kwargs):
        if next(_batches) == int(_KILL_AFTER):
            if torch.distributed.is_initialized():
                torch.distributed.barrier()
            os.kill(os.getpid(), signal.SIGKILL)
        return _generate(self, *args, **kwargs)

    GenerationMixin.generate = _generate_or_die
