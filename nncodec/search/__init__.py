"""Joint quantization x width search under an energy budget (seed 003), on Optuna."""

from .finetune import FineTuneConfig
from .runner import CONTROLLERS, SearchConfig, SearchResult, run_search
from .score import ScoreConfig, joint_score, scaling_delta, score
from .space import SearchSpace
from .task import ClassifierTask, FidelityTask, FunctionTask, Task

__all__ = ["run_search", "SearchConfig", "SearchResult", "CONTROLLERS", "SearchSpace", "ScoreConfig", "score",
           "joint_score", "scaling_delta", "Task", "ClassifierTask", "FunctionTask", "FidelityTask", "FineTuneConfig"]
