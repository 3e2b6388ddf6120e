"""Probes: every task scored on its held-out items at each evaluation step.

Per task `t`, the columns (float64, in history and summary rows):

    probe/t/exact_match      greedy answer (up to its first newline) equals the target, newline emitted
    probe/t/token_accuracy   teacher-forced: argmax equals the target token, over target tokens
    probe/t/target_logprob   teacher-forced: mean log p of the target tokens (nats; the newline included)
    probe/t/edit_distance    mean token Levenshtein distance of the greedy answer to the target answer
    probe/t/brier            teacher-forced: mean multi-class Brier score of the target tokens
    probe/t/items            how many held-out items were scored

and the same metrics of chance, `probe/t/chance_<metric>`: a guesser that knows the form of the
answer but not the prompt. Per token it is uniform over the task's answer alphabet of A characters
(accuracy 1/A, log-prob -log A, Brier 1 - 1/A); its exact match is the task's
`chance_exact_match` (uniform over well-formed answers), its edit distance the mean over items of
the distance of a random well-formed answer (a fixed seed, so the column is constant).

Greedy answers are read from as many generated tokens as the target has, newline included: enough
to decide exact match, and an answer that runs on is cut there (its edit distance counts the
characters within that length). Decoding stops at a chunk's longest target, so short-answer tasks
cost a few steps.

All items of all tasks are scored together in fixed-size chunks by one compiled pass per run,
whatever the number of tasks: a forward over prompt + target gives the teacher-forced metrics and
the key-value cache from which greedy decoding continues each prompt (scaling/science/sampling.py).
Dimension letters as in scaling/model.py (S here: prompt + target positions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from scaling.science import metrics, sampling
from scaling.data import tasks as tasks_mod
from scaling.config import ModelConfig, TasksConfig

NEWLINE = ord("\n")
METRICS = ("exact_match", "token_accuracy", "target_logprob", "edit_distance", "brier")
CHUNK = 128  # items per compiled call


@dataclass
class _TaskItems:
    name: str
    rows: slice  # into the concatenated arrays
    targets: list[list[int]]  # answer tokens without the newline
    chance: dict[str, float]


def chance_levels(task: tasks_mod.Task, items: list[tasks_mod.Item], seed: int = 0) -> dict[str, float]:
    a = len(task.answer_alphabet())
    rng = np.random.default_rng(seed)
    distances = [metrics.edit_distance(task.random_answer(rng, it).encode(), it.target[:-1].encode()) for it in items]
    return {"chance_exact_match": float(np.mean([task.chance_exact_match(it) for it in items])) if items else math.nan,
            "chance_token_accuracy": 1.0 / a, "chance_target_logprob": -math.log(a), "chance_brier": 1.0 - 1.0 / a,
            "chance_edit_distance": float(np.mean(distances)) if items else math.nan}


class Probes:
    """The held-out items of every task of `cfg`, tokenised and padded once; `evaluate(params)` scores
    them all."""

    def __init__(self, cfg: TasksConfig, model: ModelConfig, dtype: str = "float32", chunk: int = CHUNK):
        self.model, self.chunk = model, chunk
        self.tasks: list[_TaskItems] = []
        prompts, targets = [], []
        for spec in cfg.tasks:
            task = tasks_mod.make_task(spec)
            # Shortest targets first: a chunk decodes only as far as its longest target.
            items = sorted(tasks_mod.probe_items(cfg, spec), key=lambda it: len(it.target))
            start = len(prompts)
            prompts += [bytes([tasks_mod.SEP]) + it.prompt.encode() for it in items]
            targets += [it.target.encode() for it in items]
            self.tasks.append(_TaskItems(spec.name, slice(start, len(prompts)),
                                         [list(it.target[:-1].encode()) for it in items], chance_levels(task, items)))
        n = len(prompts)
        if n == 0:
            raise ValueError("no task has a held-out instance to probe: raise heldout_fraction or widen the tasks")
        self.n_items = n
        self.max_prompt = max(len(p) for p in prompts)
        self.max_new = max(len(t) for t in targets)
        length = self.max_prompt + self.max_new
        if length > model.seq_len:
            raise ValueError(f"probe items need {length} tokens, more than seq_len {model.seq_len}")
        rows = -(-n // chunk) * chunk
        self.full = np.zeros((rows, length), np.int32)  # prompt + target, right-padded
        self.target_mask = np.zeros((rows, length - 1), bool)  # positions whose next token is a target token
        self.prompt_len = np.ones(rows, np.int32)
        self.target_len = np.zeros(rows, np.int32)  # newline included
        for i, (p, t) in enumerate(zip(prompts, targets)):
            self.target_len[i] = len(t)
            self.full[i, :len(p) + len(t)] = list(p + t)
            self.target_mask[i, len(p) - 1:len(p) + len(t) - 1] = True
            self.prompt_len[i] = len(p)
        self._bind = sampling.binder(model, dtype)
        self._pass = jax.jit(self._probe_pass)

    def _probe_pass(self, params, full_bs, prompt_len_b, n_steps):
        """One forward over prompt + target (teacher-forced metrics), whose cache then serves greedy
        decoding from the end of each prompt: no separate prefill."""
        gpt = self._bind(params)
        b, length = full_bs.shape
        logits_bsv, cache = sampling.prefill(gpt, full_bs, length)
        logp = jax.nn.log_softmax(logits_bsv[:, :-1], axis=-1)
        targets = full_bs[:, 1:]
        logp_target = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        probs = jnp.exp(logp)
        brier = jnp.sum(probs * probs, axis=-1) - 2.0 * jnp.exp(logp_target) + 1.0
        correct = jnp.argmax(logp, axis=-1) == targets
        last_bv = logits_bsv[jnp.arange(b), prompt_len_b - 1]
        tokens = sampling.greedy_loop(gpt, last_bv, cache, prompt_len_b, n_steps, self.max_new)
        return logp_target, correct, brier, tokens

    def chance_columns(self) -> dict[str, float]:
        return {f"probe/{t.name}/{k}": v for t in self.tasks for k, v in t.chance.items()}

    def evaluate(self, params) -> dict[str, float]:
        logp, correct, brier, generated = [], [], [], []
        for start in range(0, len(self.full), self.chunk):
            rows = slice(start, start + self.chunk)
            # Each answer is read from as many tokens as its target has (newline included).
            out = self._pass(params, self.full[rows], self.prompt_len[rows], int(self.target_len[rows].max()))
            logp.append(np.asarray(out[0]))
            correct.append(np.asarray(out[1]))
            brier.append(np.asarray(out[2]))
            tokens = np.array(out[3])
            tokens[np.arange(self.max_new)[None, :] >= self.target_len[rows, None]] = 0
            generated.append(tokens)
        logp, correct, brier = (np.concatenate(x) for x in (logp, correct, brier))
        generated = np.concatenate(generated)
        columns = {}
        for t in self.tasks:
            if not t.targets:  # an empty held-out set: nothing to score
                columns.update({f"probe/{t.name}/{k}": math.nan for k in METRICS})
                columns[f"probe/{t.name}/items"] = 0.0
                continue
            mask = self.target_mask[t.rows]
            answers = [_answer(row) for row in generated[t.rows]]
            exact = [ended and answer == target for (answer, ended), target in zip(answers, t.targets)]
            distance = [metrics.edit_distance(answer, target) for (answer, _), target in zip(answers, t.targets)]
            values = {"exact_match": np.mean(exact), "token_accuracy": correct[t.rows][mask].mean(),
                      "target_logprob": logp[t.rows][mask].mean(), "edit_distance": np.mean(distance),
                      "brier": brier[t.rows][mask].mean(), "items": len(t.targets)}
            columns.update({f"probe/{t.name}/{k}": float(v) for k, v in values.items()})
        return columns


def _answer(tokens: np.ndarray) -> tuple[list[int], bool]:
    """The generated answer up to its first newline, and whether a newline was emitted."""
    tokens = [int(x) for x in tokens]
    if NEWLINE in tokens:
        return tokens[:tokens.index(NEWLINE)], True
    return tokens, False
