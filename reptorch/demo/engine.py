"""One-shot learning of drawn symbols: fine-tune on the support drawings, classify the query.

Exactly what `reptorch eval` does for one non-transductive task, through the same code
(`reptorch.evaluation.Evaluator`, hence `reptorch.adapt.adapt` and the model's forward): from the
model's phi and carried inner optimiser state, `eval_iters` steps of the inner optimiser on
mini-batches of `eval_batch` support images (drawn as the reference's `_mini_batches`, from a
fixed seed, so the same drawings always give the same answer), with the run's loss; then the query
is classified in one batch with the whole support set (BatchNorm statistics from support + 1).
Class probabilities are the softmax of the query's logits over the task's N classes.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from reptorch.data.tasks import EvalTasks, batched_minibatch_indices
from reptorch.demo.model import DemoModel
from reptorch.errors import ConfigError
from reptorch.evaluation import INDEX_SEED_OFFSET, Evaluator
from reptorch.inner_optim import make_inner_optimizer
from reptorch.run.setup import eval_spec

MAX_SHOTS = 5
CACHED = 16  # fine-tuned weights kept, one set per support set (~0.45 MB each)


@dataclass(frozen=True)
class Prediction:
    probabilities: list[float]  # (N,) softmax over the task's classes
    predicted: int  # the most likely class
    losses: list[float]  # fine-tuning loss per inner step (on that step's mini-batch)
    milliseconds: float  # fine-tuning (unless cached) + prediction
    fine_tuned: bool  # False: the weights fine-tuned on this support set were reused


@dataclass(frozen=True)
class FineTuning:
    losses: list[float]  # fine-tuning loss per inner step
    milliseconds: float
    fine_tuned: bool  # False: these support images were fine-tuned on already (cached)


class Engine:
    """Fine-tunes and predicts N-way K-shot tasks of 28x28 images with one trained model.

    Thread-safe: calls are serialised (the fast oracle reuses per-thread scratch buffers, and the
    2-core machines this runs on gain nothing from running two tasks at once).
    """

    def __init__(self, model: DemoModel, workers: int | None = None, seed: int = 0) -> None:
        self.model, self.workers, self.seed = model, workers, seed
        self.optimizer = make_inner_optimizer(
            model.config.inner_optimizer, model.config.learning_rate
        )
        self._module = model.module()
        self._evaluators: dict[tuple[int, int], Evaluator] = {}
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, tuple] = OrderedDict()  # support -> (theta_k, losses)

    def evaluator(self, ways: int, shots: int) -> Evaluator:
        """The evaluator of the run's non-transductive evaluation settings for N-way K-shot."""
        if not 2 <= ways <= self.model.ways:
            raise ConfigError(f"ways={ways}: this model classifies 2 to {self.model.ways} classes")
        if not 1 <= shots <= MAX_SHOTS:
            raise ConfigError(f"shots={shots}: give 1 to {MAX_SHOTS} drawings per class")
        key = (ways, shots)
        if key not in self._evaluators:
            spec = eval_spec(self.model.config, ways=ways, shots=shots, transductive=False)
            self._evaluators[key] = Evaluator(
                self._module, self.optimizer, spec, loss_fn=self.model.loss(), workers=self.workers
            )
        return self._evaluators[key]

    def indices(self, evaluator: Evaluator, tasks: int) -> torch.Tensor:
        """Mini-batch indices (T, eval_iters, eval_batch), fixed seed (as `reptorch eval`)."""
        spec = evaluator.spec
        generator = torch.Generator().manual_seed(self.seed + INDEX_SEED_OFFSET)
        return batched_minibatch_indices(
            tasks,
            spec.support_size,
            spec.inner_batch,
            spec.inner_iters,
            spec.replacement,
            generator,
        )

    def tasks(self, support: torch.Tensor, queries: torch.Tensor) -> EvalTasks:
        """T tasks from support (T, N, K, 28, 28) images, class-major, and queries (T, Q, 28, 28);
        0 ink, 1 paper. The queries' labels are unknown (zeros)."""
        tasks, ways, shots = support.shape[:3]
        return EvalTasks(
            support.reshape(tasks, ways * shots, 1, 28, 28).float(),
            torch.arange(ways).repeat_interleave(shots).expand(tasks, -1),
            queries.reshape(tasks, -1, 1, 28, 28).float(),
            torch.zeros(queries.shape[:2], dtype=torch.long),
        )

    def _fine_tune(self, evaluator: Evaluator, tasks: EvalTasks):
        """(theta_k (T-batched), losses (T, k)): the inner loop on each task's support set."""
        count = tasks.support_xs.shape[0]
        indices = self.indices(evaluator, count)
        result = evaluator.adapt(self.model.phi, self.model.inner_state, tasks, indices)
        return result.params, result.losses.reshape(count, -1)  # (T, k)

    def run(self, support: torch.Tensor, queries: torch.Tensor):
        """(logits (T, Q, classes), losses (T, k)) for T tasks of the same N and K (`tasks`)."""
        evaluator = self.evaluator(*support.shape[1:3])
        tasks = self.tasks(support, queries)
        with self._lock:
            params, losses = self._fine_tune(evaluator, tasks)
            return evaluator.outputs(params, tasks), losses

    def warm_up(self, ways: int = 3, shots: int = 1) -> None:
        """One throw-away prediction, so that the first user does not wait for compilation."""
        ways = min(ways, self.model.ways)
        blank = np.ones((ways, shots, 28, 28), np.float32)
        for c in range(ways):
            blank[c, :, 4 + 4 * c : 8 + 4 * c, 6:20] = 0.0
        for _ in range(2):
            self.run(torch.as_tensor(blank)[None], torch.as_tensor(blank[:1, 0])[None])

    def forget(self) -> None:
        """Drops the cached fine-tuned weights (the next prediction fine-tunes afresh)."""
        with self._lock:
            self._cache.clear()

    def _tuned(self, evaluator: Evaluator, tasks: EvalTasks, support: torch.Tensor):
        """(theta_k, losses, fresh): the cached fine-tuning on these support images, else a new
        one (then cached). Call with the lock held."""
        ways, shots = support.shape[:2]
        key = (ways, shots, hashlib.sha256(support.numpy().tobytes()).hexdigest())
        cached = self._cache.pop(key, None)
        params, losses = cached or self._fine_tune(evaluator, tasks)
        self._cache[key] = (params, losses)
        while len(self._cache) > CACHED:
            self._cache.popitem(last=False)
        return params, losses, cached is None

    def fine_tune(self, support: np.ndarray) -> FineTuning:
        """Fine-tunes on support (N, K, 28, 28) images ahead of the query, and keeps the weights:
        the page calls it once every box but the query is drawn, so that the query's strokes
        then cost one forward pass each (`predict` finds the weights in the cache)."""
        start = time.perf_counter()
        evaluator = self.evaluator(*support.shape[:2])
        support_t = torch.tensor(support, dtype=torch.float32)
        tasks = self.tasks(support_t[None], torch.ones(1, 1, 28, 28))
        with self._lock:
            _, losses, fresh = self._tuned(evaluator, tasks, support_t)
        return FineTuning(
            losses=[float(v) for v in losses[0]],
            milliseconds=(time.perf_counter() - start) * 1e3,
            fine_tuned=fresh,
        )

    def predict(self, support: np.ndarray, query: np.ndarray) -> Prediction:
        """One task: support (N, K, 28, 28) and one query (28, 28) images.

        The fine-tuned weights depend on the support images alone, so they are kept for the
        last `CACHED` support sets: while only the query changes (the page sends every stroke),
        a prediction is one forward pass, with the same result as a fresh fine-tuning.
        """
        start = time.perf_counter()
        ways, shots = support.shape[:2]
        evaluator = self.evaluator(ways, shots)
        # torch.tensor copies: the render cache hands out read-only arrays
        support_t = torch.tensor(support, dtype=torch.float32)
        query_t = torch.tensor(query, dtype=torch.float32).reshape(1, 1, 28, 28)
        tasks = self.tasks(support_t[None], query_t)
        with self._lock:
            params, losses, fresh = self._tuned(evaluator, tasks, support_t)
            logits = evaluator.outputs(params, tasks)
        probabilities = logits[0, 0, :ways].double().softmax(-1)
        return Prediction(
            probabilities=[float(p) for p in probabilities],
            predicted=int(probabilities.argmax()),
            losses=[float(v) for v in losses[0]],
            milliseconds=(time.perf_counter() - start) * 1e3,
            fine_tuned=fresh,
        )
