"""A search worker process for the multi-process tests: joins (or resumes) a study and runs trials.

usage: python -m tests.search.worker REFERENCE.pt STORAGE_URL STUDY N_TRIALS SLEEP_S HEARTBEAT_S WORKER
Prints the number of trials this process trained.
"""

import sys
import time

import torch

from nncodec.search import SearchConfig
from nncodec.search.runner import run_trials
from tests.search.digits import digits_cnn, space, task


class CountingTask:
    def __init__(self, inner, sleep):
        self.inner, self.sleep, self.trained = inner, sleep, 0

    def train_epoch(self, model, epoch, proxy):
        self.trained += 1
        time.sleep(self.sleep)
        self.inner.train_epoch(model, epoch, proxy)

    def evaluate(self, model):
        return self.inner.evaluate(model)


def main() -> None:
    ref_path, url, study, n_trials, sleep, heartbeat, worker = sys.argv[1:8]
    model = digits_cnn()
    model.load_state_dict(torch.load(ref_path, weights_only=True))
    counting = CountingTask(task(0.3), float(sleep))
    cfg = SearchConfig(controller="random", n_trials=int(n_trials), storage=url, study_name=study, seed=0,
                       worker=int(worker),
                       heartbeat_interval=int(heartbeat), grace_period=2 * int(heartbeat), progress=False,
                       out_dir=str(__import__("tempfile").mkdtemp()))
    run_trials(model, space(model), counting, cfg)
    print(counting.trained, flush=True)


if __name__ == "__main__":
    main()
