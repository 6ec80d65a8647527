"""A search worker process for the multi-process tests: joins (or resumes) a study and runs trials.

usage: python -m tests.search.worker REFERENCE.pt STORAGE_URL STUDY N_TRIALS SLEEP_S HEARTBEAT_S WORKER [STALL_AFTER]
Prints the number of trials this process trained. With STALL_AFTER, once the study holds that many complete
trials the worker prints ``stalled`` inside the next trial's training and waits there, its trial running,
for the test to kill it: a crash at a known point, with no timing involved.
"""

import sys
import time

import torch

from nncodec.search import SearchConfig
from nncodec.search.runner import run_trials
from tests.search.digits import digits_cnn, space, task


class CountingTask:
    def __init__(self, inner, sleep, stall_after=None, url=None, study=None):
        self.inner, self.sleep, self.trained = inner, sleep, 0
        self.stall_after, self.url, self.study = stall_after, url, study

    def train_epoch(self, model, epoch, proxy):
        self.trained += 1
        if self.stall_after is not None:
            import optuna

            trials = optuna.load_study(study_name=self.study, storage=self.url).get_trials(deepcopy=False)
            if sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) >= self.stall_after:
                print("stalled", flush=True)  # this trial is running: wait here to be killed
                while True:
                    time.sleep(60)
        time.sleep(self.sleep)
        self.inner.train_epoch(model, epoch, proxy)

    def evaluate(self, model):
        return self.inner.evaluate(model)


def main() -> None:
    ref_path, url, study, n_trials, sleep, heartbeat, worker = sys.argv[1:8]
    stall_after = int(sys.argv[8]) if len(sys.argv) > 8 else None
    model = digits_cnn()
    model.load_state_dict(torch.load(ref_path, weights_only=True))
    counting = CountingTask(task(0.3), float(sleep), stall_after, url, study)
    cfg = SearchConfig(controller="random", n_trials=int(n_trials), storage=url, study_name=study, seed=0,
                       worker=int(worker),
                       heartbeat_interval=int(heartbeat), grace_period=2 * int(heartbeat), progress=False,
                       out_dir=str(__import__("tempfile").mkdtemp()))
    run_trials(model, space(model), counting, cfg)
    print(counting.trained, flush=True)


if __name__ == "__main__":
    main()
