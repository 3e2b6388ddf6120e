"""Tasks: small problems written as byte-text documents, mixed into a source and probed.

A task is one class: its settings (`PARAMS`, name -> default; the type is the default's), how to
draw an instance (`sample`), and the space of well-formed answers (`answer_alphabet`,
`chance_exact_match`, `random_answer`) from which chance levels follow. Register it in `TASKS` and
it can be named in a sweep file (`[data.tasks.<name>] kind = "..."`).

An instance is a prompt and a target; in the token stream it is the document

    SEP prompt target          e.g.  "\\x0012+345=357\\n"

(SEP, byte 0, is the end-of-document byte of scaling/data/sources.py; the target always ends in "\\n").

Held-out instances: an instance's `key` names the problem independently of its format (the
addition 12+345 has one key whether its answer is written directly, reversed or with a
scratchpad). An instance is held out iff sha256(key) / 2^64 < heldout_fraction, the same rule on
every machine. Training documents are drawn only from instances that are not held out; probes and
the task documents of the validation split only from held-out ones. So no probe instance is ever
trained on (tests/test_tasks.py checks it on the mixed stream).
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from scaling.config import TasksConfig, TaskSpec
from scaling.data.splitcache import write_split

SEP = 0
NEWLINE = "\n"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Item:
    key: str  # the problem, independent of its format: decides the held-out split
    prompt: str
    target: str  # the answer, ending in "\n"


def is_heldout(key: str, fraction: float) -> bool:
    # sha256, not hash(): Python's str hash is salted per process.
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2.0**64 < fraction


def heldout_of_keys(keys: list[bytes], fraction: float) -> np.ndarray:
    """`is_heldout` of many keys (bytes) at once: the same sha256 and the same float comparison."""
    digests = b"".join(hashlib.sha256(k).digest()[:8] for k in keys)
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64 < fraction


@dataclass
class Documents:
    """Task documents as arrays: row i is `data[i, :lengths[i]]`, and whether its instance is held out."""

    data: np.ndarray  # uint8 [n, width], right-padded with zeros
    lengths: np.ndarray  # int64 [n]
    heldout: np.ndarray  # bool [n]

    @classmethod
    def of(cls, docs: list[bytes], heldout) -> Documents:
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        data = np.zeros((len(docs), int(lengths.max(initial=0))), np.uint8)
        data[np.arange(data.shape[1])[None, :] < lengths[:, None]] = np.frombuffer(b"".join(docs), np.uint8)
        return cls(data, lengths, np.asarray(heldout, dtype=bool).reshape(len(docs)))

    def take(self, rows) -> Documents:
        return Documents(self.data[rows], self.lengths[rows], self.heldout[rows])

    @staticmethod
    def concat(parts: list[Documents]) -> Documents:
        width = max((p.data.shape[1] for p in parts), default=0)
        data = np.zeros((sum(len(p.lengths) for p in parts), width), np.uint8)
        row = 0
        for p in parts:
            data[row:row + len(p.lengths), :p.data.shape[1]] = p.data
            row += len(p.lengths)
        return Documents(data, np.concatenate([p.lengths for p in parts] or [np.zeros(0, np.int64)]),
                         np.concatenate([p.heldout for p in parts] or [np.zeros(0, bool)]))

    def flat(self) -> np.ndarray:
        """The documents end to end, in row order."""
        return self.data[np.arange(self.data.shape[1])[None, :] < self.lengths[:, None]]


class Task:
    kind: ClassVar[str]
    PARAMS: ClassVar[dict[str, object]]

    def __init__(self, **params):
        unknown = set(params) - set(self.PARAMS)
        if unknown:
            raise TypeError(f"{self.kind}: unknown parameter {sorted(unknown)[0]!r}")
        self.params = {**self.PARAMS, **params}
        for k, v in self.params.items():
            setattr(self, k, v)

    def check(self) -> list[tuple[str, str]]:
        """(parameter, what is wrong) for impossible settings."""
        return []

    def sample_many(self, rng: np.random.Generator, n: int) -> list[Item]:
        """n instances (vectorised: the mix draws hundreds of thousands)."""
        raise NotImplementedError

    def heldout(self, item: Item, fraction: float) -> bool:
        """`is_heldout(item.key, fraction)`; a task with a small instance space may remember it."""
        return is_heldout(item.key, fraction)

    def sample(self, rng: np.random.Generator) -> Item:
        return self.sample_many(rng, 1)[0]

    def sample_documents(self, rng: np.random.Generator, n: int, fraction: float) -> Documents:
        """The n instances `sample_many(rng, n)` draws (the same generator calls, so the same
        instances), as documents, with their held-out verdicts at `fraction`. This default goes
        through the instances one by one; a task that a mix draws millions of times overrides it
        with array code that must give the same bytes (tests/test_tasks.py compares the two)."""
        items = self.sample_many(rng, n)
        return Documents.of([document(it) for it in items], [self.heldout(it, fraction) for it in items])

    def max_prompt_chars(self) -> int:
        raise NotImplementedError

    def max_target_chars(self) -> int:
        raise NotImplementedError

    def answer_alphabet(self) -> str:
        """Every character a well-formed target can contain, "\\n" included."""
        raise NotImplementedError

    def chance_exact_match(self, item: Item) -> float:
        """Probability that a well-formed answer guessed without reading the prompt is right."""
        raise NotImplementedError

    def random_answer(self, rng: np.random.Generator, item: Item) -> str:
        """A well-formed answer guessed without reading the prompt (for the chance edit distance)."""
        raise NotImplementedError


def _digits(rng, n_digits) -> np.ndarray:
    """Uniform numbers with exactly n_digits digits (0..9 for one digit), elementwise."""
    n_digits = np.asarray(n_digits, dtype=np.int64)
    low = np.where(n_digits == 1, 0, 10 ** (n_digits - 1))
    return low + (rng.random(n_digits.shape) * (10 ** n_digits - low)).astype(np.int64)


_LETTERS = np.array(list(string.ascii_lowercase))


class Addition(Task):
    """a+b with operands of min_digits..max_digits digits. `format`: "direct" (357), "reversed"
    (753: least significant digit first, which makes the carry local; Lee et al. 2023) or
    "scratchpad" (one step per digit, then the answer: 3+9+0=12,2+5+1=8,1+4+0=5:582; after Nye et
    al. 2021 and the chain-of-thought of Wei et al. 2022)."""

    kind = "addition"
    PARAMS = {"min_digits": 1, "max_digits": 3, "format": "direct"}
    FORMATS = ("direct", "reversed", "scratchpad")

    def check(self):
        bad = []
        if self.min_digits < 1:
            bad.append(("min_digits", f"expected an integer >= 1, got {self.min_digits}"))
        elif self.max_digits < self.min_digits:
            bad.append(("max_digits", f"expected max_digits >= min_digits = {self.min_digits}, got {self.max_digits}"))
        if self.max_digits > 12:
            bad.append(("max_digits", f"expected at most 12, got {self.max_digits}"))
        if self.format not in self.FORMATS:
            bad.append(("format", f"expected one of {', '.join(self.FORMATS)}, got {self.format!r}"))
        return bad

    def sample_many(self, rng, n):
        digits = rng.integers(self.min_digits, self.max_digits + 1, size=(2, n))
        a, b = _digits(rng, digits[0]).tolist(), _digits(rng, digits[1]).tolist()
        if self.max_digits > self.MEMO_DIGITS:
            return [self._item(x, y) for x, y in zip(a, b)]
        # A small instance space (at most 10^6 pairs) that a mix draws millions of times: each pair's
        # item is written once and then reused (the same items, so the same stream).
        seen = self.__dict__.setdefault("_items", {})
        out = []
        for pair in zip(a, b):
            item = seen.get(pair)
            if item is None:
                item = seen[pair] = self._item(*pair)
            out.append(item)
        return out

    MEMO_DIGITS = 3  # operands up to this many digits: items and held-out verdicts are remembered

    def sample_documents(self, rng, n, fraction):
        if self.max_digits > self.MEMO_DIGITS:
            return super().sample_documents(rng, n, fraction)
        digits = rng.integers(self.min_digits, self.max_digits + 1, size=(2, n))
        a, b = _digits(rng, digits[0]), _digits(rng, digits[1])  # as sample_many draws them
        # Every pair's document and verdict written once into a table over the instance space
        # (at most 10^6 pairs), then gathered by pair.
        base = 10 ** self.max_digits
        pair = a * base + b
        table = self.__dict__.get("_table")
        if table is None:
            width = 1 + self.max_prompt_chars() + self.max_target_chars()
            table = self._table = {"data": np.zeros((base * base, width), np.uint8),
                                   "lengths": np.zeros(base * base, np.int64), "heldout": {}}
        new = np.unique(pair[table["lengths"][pair] == 0])
        if new.size:
            built = Documents.of([document(self._item(int(p) // base, int(p) % base)) for p in new.tolist()], new * 0)
            table["data"][new, :built.data.shape[1]] = built.data
            table["lengths"][new] = built.lengths
        verdicts = table["heldout"].setdefault(fraction, np.full(base * base, -1, np.int8))
        unknown = np.unique(pair[verdicts[pair] < 0])
        if unknown.size:
            keys = [f"addition:{int(p) // base}+{int(p) % base}".encode() for p in unknown.tolist()]
            verdicts[unknown] = heldout_of_keys(keys, fraction)
        return Documents(table["data"][pair], table["lengths"][pair], verdicts[pair].astype(bool))

    def _item(self, x: int, y: int) -> Item:
        return Item(key=f"addition:{x}+{y}", prompt=f"{x}+{y}=", target=self.answer(x, y) + NEWLINE)

    def heldout(self, item, fraction):
        if self.max_digits > self.MEMO_DIGITS:
            return is_heldout(item.key, fraction)
        verdicts = self.__dict__.setdefault("_heldout", {})
        verdict = verdicts.get((item.key, fraction))
        if verdict is None:
            verdict = verdicts[(item.key, fraction)] = is_heldout(item.key, fraction)
        return verdict

    def answer(self, a: int, b: int) -> str:
        total = str(a + b)
        if self.format == "reversed":
            return total[::-1]
        if self.format == "scratchpad":
            xs, ys = str(a)[::-1], str(b)[::-1]
            steps, carry = [], 0
            for i in range(max(len(xs), len(ys))):
                x = int(xs[i]) if i < len(xs) else 0
                y = int(ys[i]) if i < len(ys) else 0
                steps.append(f"{x}+{y}+{carry}={x + y + carry}")
                carry = (x + y + carry) // 10
            return ",".join(steps) + ":" + total
        return total

    def max_prompt_chars(self):
        return 2 * self.max_digits + 2

    def max_target_chars(self):
        n = self.max_digits + 1
        return n + 1 + (self.max_digits * len("9+9+1=19,") if self.format == "scratchpad" else 0)

    def answer_alphabet(self):
        return string.digits + NEWLINE + ("+=,:" if self.format == "scratchpad" else "")

    def _operands(self, item: Item) -> tuple[str, str]:
        a, b = item.prompt[:-1].split("+")
        return a, b

    def chance_exact_match(self, item):
        # A guess uniform over the sums of two operands of these lengths (the scratchpad is implied by it).
        a, b = self._operands(item)
        lo = sum(0 if len(x) == 1 else 10 ** (len(x) - 1) for x in (a, b))
        hi = sum(10 ** len(x) - 1 for x in (a, b))
        return 1.0 / (hi - lo + 1)

    def random_answer(self, rng, item):
        a, b = self._operands(item)
        return self.answer(int(_digits(rng, len(a))), int(_digits(rng, len(b))))


class Recall(Task):
    """Associative recall in context (after Arora et al. 2023, "Zoology"): `pairs` key:value pairs,
    then one of the keys; the answer is its value. Keys are distinct two-letter words, values
    `value_digits`-digit numbers."""

    kind = "recall"
    PARAMS = {"pairs": 6, "value_digits": 2}

    def check(self):
        bad = []
        if not 1 <= self.pairs <= 100:
            bad.append(("pairs", f"expected an integer in [1, 100], got {self.pairs}"))
        if not 1 <= self.value_digits <= 6:
            bad.append(("value_digits", f"expected an integer in [1, 6], got {self.value_digits}"))
        return bad

    def sample_many(self, rng, n):
        codes = rng.integers(0, 26 * 26, size=(n, self.pairs))
        repeated = np.array([len(set(row)) < self.pairs for row in codes.tolist()], dtype=bool)
        while repeated.any():  # keys are distinct within an instance: redraw the rows that repeat one
            codes[repeated] = rng.integers(0, 26 * 26, size=(int(repeated.sum()), self.pairs))
            repeated = np.array([len(set(row)) < self.pairs for row in codes.tolist()], dtype=bool)
        keys = np.char.add(_LETTERS[codes // 26], _LETTERS[codes % 26]).tolist()
        values = rng.integers(0, 10 ** self.value_digits, size=(n, self.pairs)).tolist()
        query = rng.integers(0, self.pairs, size=n).tolist()
        out = []
        for k, v, q in zip(keys, values, query):
            v = [str(x).zfill(self.value_digits) for x in v]
            prompt = " ".join(f"{a}:{b}" for a, b in zip(k, v)) + f"|{k[q]}:"
            out.append(Item(key=f"recall:{prompt}", prompt=prompt, target=v[q] + NEWLINE))
        return out

    def max_prompt_chars(self):
        return self.pairs * (3 + self.value_digits + 1) + 3

    def max_target_chars(self):
        return self.value_digits + 1

    def answer_alphabet(self):
        return string.digits + NEWLINE

    def chance_exact_match(self, item):
        return 10.0 ** -self.value_digits

    def random_answer(self, rng, item):
        return str(int(rng.integers(10 ** self.value_digits))).zfill(self.value_digits)


class Copy(Task):
    """Copy a random span of lowercase letters: "copy:qwxkt=" -> "qwxkt" (the induction pattern of
    Olsson et al. 2022: find the earlier occurrence, emit what followed it)."""

    kind = "copy"
    PARAMS = {"min_len": 4, "max_len": 8}

    def check(self):
        if not 1 <= self.min_len <= self.max_len <= 100:
            return [("min_len", f"expected 1 <= min_len <= max_len <= 100, got {self.min_len}, {self.max_len}")]
        return []

    def sample_many(self, rng, n):
        lengths = rng.integers(self.min_len, self.max_len + 1, size=n).tolist()
        letters = (rng.integers(0, 26, size=(n, self.max_len)) + ord("a")).astype(np.uint8)
        text, m = letters.tobytes().decode(), self.max_len  # row i is text[i * m:(i + 1) * m]
        spans = [text[i * m:i * m + k] for i, k in enumerate(lengths)]
        return [Item(key=f"copy:{span}", prompt=f"copy:{span}=", target=span + NEWLINE) for span in spans]

    def sample_documents(self, rng, n, fraction):
        lengths = rng.integers(self.min_len, self.max_len + 1, size=n)  # as sample_many draws them
        letters = (rng.integers(0, 26, size=(n, self.max_len)) + ord("a")).astype(np.uint8)
        m, head = self.max_len, np.frombuffer(bytes([SEP]) + b"copy:", np.uint8)
        data = np.zeros((n, 2 * m + 8), np.uint8)  # SEP copy: span = span \n
        data[:, :6] = head
        for start in range(0, n, 1 << 18):  # in slices: the index arrays are 8 bytes an entry
            rows = slice(start, start + (1 << 18))
            k, lt = lengths[rows, None], letters[rows]
            j = np.broadcast_to(np.arange(2 * m + 8)[None, :], (len(k), 2 * m + 8))
            r = np.broadcast_to(np.arange(len(k))[:, None], j.shape)
            out = data[rows]
            first, second = (j >= 6) & (j < 6 + k), (j >= 7 + k) & (j < 7 + 2 * k)
            out[first] = lt[r[first], (j - 6)[first]]
            out[second] = lt[r[second], (j - 7 - k)[second]]
            out[j == 6 + k] = ord("=")
            out[j == 7 + 2 * k] = ord(NEWLINE)
        return Documents(data, 2 * lengths + 8, self._heldout_spans(letters, lengths, fraction))

    def _heldout_spans(self, letters, lengths, fraction) -> np.ndarray:
        """is_heldout("copy:" + span) of every row; spans of up to 4 letters (26^4 of them) are
        remembered by their base-26 code, longer ones hashed each time."""
        out = np.zeros(len(lengths), bool)
        memo = self.__dict__.setdefault("_held_memo", {})
        for k in np.unique(lengths).tolist():
            rows = np.flatnonzero(lengths == k)
            if k > 4:
                out[rows] = heldout_of_keys([b"copy:" + row[:k].tobytes() for row in letters[rows]], fraction)
                continue
            code = np.zeros(len(rows), np.int64)
            for i in range(k):
                code = code * 26 + (letters[rows, i] - ord("a"))
            verdicts = memo.setdefault((k, fraction), np.full(26 ** k, -1, np.int8))
            unknown, first = np.unique(np.where(verdicts[code] < 0, code, -1), return_index=True)
            if unknown[0] < 0:
                unknown, first = unknown[1:], first[1:]
            if unknown.size:
                keys = [b"copy:" + row[:k].tobytes() for row in letters[rows[first]]]
                verdicts[unknown] = heldout_of_keys(keys, fraction)
            out[rows] = verdicts[code].astype(bool)
        return out

    def max_prompt_chars(self):
        return self.max_len + 6

    def max_target_chars(self):
        return self.max_len + 1

    def answer_alphabet(self):
        return string.ascii_lowercase + NEWLINE

    def chance_exact_match(self, item):
        return 26.0 ** -(len(item.target) - 1)

    def random_answer(self, rng, item):
        return "".join(_LETTERS[rng.integers(0, 26, size=len(item.target) - 1)])


class Modular(Task):
    """(a op b) mod p for a, b in [0, p) (the algorithmic tasks of Power et al. 2022):
    "17+85%97=" -> "5"."""

    kind = "modular"
    PARAMS = {"modulus": 97, "op": "+"}
    OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}

    def check(self):
        bad = []
        if not 2 <= self.modulus <= 10**6:
            bad.append(("modulus", f"expected an integer in [2, 1000000], got {self.modulus}"))
        if self.op not in self.OPS:
            bad.append(("op", f"expected one of {', '.join(self.OPS)}, got {self.op!r}"))
        return bad

    def sample_many(self, rng, n):
        a, b = rng.integers(0, self.modulus, size=(2, n)).tolist()
        op, p = self.op, self.modulus
        return [Item(key=f"modular:{x}{op}{y}%{p}", prompt=f"{x}{op}{y}%{p}=", target=f"{self.OPS[op](x, y) % p}\n")
                for x, y in zip(a, b)]

    def max_prompt_chars(self):
        return 3 * len(str(self.modulus)) + 3

    def max_target_chars(self):
        return len(str(self.modulus - 1)) + 1

    def answer_alphabet(self):
        return string.digits + NEWLINE

    def chance_exact_match(self, item):
        return 1.0 / self.modulus

    def random_answer(self, rng, item):
        return str(int(rng.integers(self.modulus)))


TASKS: dict[str, type[Task]] = {cls.kind: cls for cls in (Addition, Recall, Copy, Modular)}


def make_task(spec: TaskSpec) -> Task:
    return TASKS[spec.kind](**dict(spec.params))


def _rng(*words) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256("|".join(map(str, words)).encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def draw(task: Task, rng: np.random.Generator, n: int, fraction: float, heldout: bool) -> list[Item]:
    """n instances on the requested side of the held-out split (fewer only if 1000 tries per
    instance found none: a side that is (almost) empty)."""
    out: list[Item] = []
    for _ in range(1000):
        if len(out) >= n:
            break
        want = n - len(out)
        share = fraction if heldout else 1 - fraction
        batch = task.sample_many(rng, int(want / share * 1.1) + 8)
        out += [it for it in batch if task.heldout(it, fraction) == heldout]
    return out[:n]


def draw_documents(task: Task, rng: np.random.Generator, n: int, fraction: float, heldout: bool) -> Documents:
    """`draw`'s instances (the same generator calls, so the same ones, in order) as documents."""
    parts, got = [], 0
    for _ in range(1000):
        if got >= n:
            break
        share = fraction if heldout else 1 - fraction
        batch = task.sample_documents(rng, int((n - got) / share * 1.1) + 8, fraction)
        keep = batch.take(batch.heldout == heldout)
        parts.append(keep)
        got += len(keep.lengths)
    return Documents.concat(parts).take(slice(0, n))


def probe_items(cfg: TasksConfig, spec: TaskSpec) -> list[Item]:
    """Up to `cfg.probe_items` distinct held-out instances of one task, a pure function of the config.
    A task whose held-out set is smaller yields all of it that turns up in about 100 draws per item."""
    task = make_task(spec)
    rng = _rng("probe", cfg.seed, spec.name, spec.kind, sorted(spec.params))
    items, seen = [], set()
    for _ in range(100 * cfg.probe_items // 256 + 1):
        for item in task.sample_many(rng, 256):
            if len(items) < cfg.probe_items and item.key not in seen and is_heldout(item.key, cfg.heldout_fraction):
                seen.add(item.key)
                items.append(item)
        if len(items) == cfg.probe_items:
            break
    return items


def max_document_tokens(spec: TaskSpec) -> int:
    """SEP + prompt + target, at most."""
    task = make_task(spec)
    return 1 + task.max_prompt_chars() + task.max_target_chars()


# ----------------------------------------------------------------------------------------------
# Mixing task documents into a source


def document(item: Item) -> bytes:
    return bytes([SEP]) + (item.prompt + item.target).encode()


def mix(stream: np.ndarray, cfg: TasksConfig, split: str, data_hash: str) -> tuple[np.ndarray, int]:
    """`stream` with task documents inserted at random points so they make up about `cfg.rate` of
    the tokens; (mixed uint8 stream, number of documents). Train documents are never held out;
    validation documents always are."""
    tasks = [make_task(s) for s in cfg.tasks]
    weights = np.array([s.weight for s in cfg.tasks], dtype=np.float64)
    rng = _rng("mix", cfg.seed, split, data_hash)
    heldout = split == "val"
    sizes = [np.mean([len(document(it)) for it in t.sample_many(_rng("size", i), 256)]) for i, t in enumerate(tasks)]
    mean_doc = float(np.average(sizes, weights=weights))
    n = len(stream)
    n_docs = max(1, int(round(n * cfg.rate / (1 - cfg.rate) / mean_doc)))
    cuts = np.sort(rng.integers(0, n + 1, size=n_docs))
    which = rng.choice(len(tasks), size=n_docs, p=weights / weights.sum())
    lengths = np.zeros(n_docs, np.int64)  # 0: a slot no instance was found for (a side that is empty)
    drawn = []
    for t, task in enumerate(tasks):
        slots = np.flatnonzero(which == t)
        docs = draw_documents(task, rng, len(slots), cfg.heldout_fraction, heldout)
        lengths[slots[:len(docs.lengths)]] = docs.lengths
        drawn.append((slots[:len(docs.lengths)], docs))
    # Every document's bytes at its place in slot order (documents end to end, as `insert_documents` takes them).
    offsets = np.cumsum(lengths) - lengths
    flat = np.empty(int(lengths.sum()), np.uint8)
    for slots, docs in drawn:
        within = np.arange(docs.data.shape[1])[None, :] < docs.lengths[:, None]
        for start in range(0, len(slots), 1 << 18):  # in slices: the positions are 8 bytes a byte
            rows = slice(start, start + (1 << 18))
            at = offsets[slots[rows], None] + np.arange(docs.data.shape[1])[None, :]
            flat[at[within[rows]]] = docs.data[rows][within[rows]]
    placed = np.flatnonzero(lengths)
    return insert_documents(np.asarray(stream, dtype=np.uint8), cuts[placed], flat, lengths[placed]), len(placed)


def insert_documents(stream: np.ndarray, cuts: np.ndarray, docs, lengths=None) -> np.ndarray:
    """`stream` with document i inserted before stream[cuts[i]] (cuts sorted; documents at one cut
    keep their order), in a few array passes instead of one slice per document. `docs`: a list of
    bytes, or the documents end to end (uint8) with their `lengths`."""
    if lengths is None:
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        docs = np.frombuffer(b"".join(docs), dtype=np.uint8)
    starts = np.asarray(cuts, dtype=np.int64) + np.cumsum(lengths) - lengths  # where each lands in the output
    total = stream.size + int(lengths.sum())
    edges = np.zeros(total + 1, dtype=np.int8)  # +1 where a document starts, -1 where it ends
    np.add.at(edges, starts, 1)
    np.add.at(edges, starts + lengths, -1)
    in_doc = np.cumsum(edges[:-1], dtype=np.int8).astype(bool)  # documents never overlap: 0 or 1
    out = np.empty(total, dtype=np.uint8)
    out[in_doc] = docs
    out[~in_doc] = stream
    return out


def mix_tasks(source, cfg: TasksConfig, cache: Path):
    """A TokenSource like `source` with task documents mixed into both splits (built into the cache
    folder once). The mix has no known optimal loss or exponents, so `optimal_nll` and `true_exponents`
    are dropped."""
    if source.vocab_size < 256 or source.train.dtype != np.uint8:
        raise ValueError("task documents are bytes: they mix only into a byte-level source")
    settings = json.dumps({"v": _FORMAT_VERSION, "source": source.content_hash, **asdict(cfg)}, sort_keys=True,
                          default=str)
    key = hashlib.sha256(settings.encode()).hexdigest()[:16]
    stem = Path(cache) / f"tasks-{key}"
    try:
        manifest = json.loads(Path(f"{stem}.json").read_text())
        if (os.path.getsize(f"{stem}.train.bin"), os.path.getsize(f"{stem}.val.bin")) != (manifest["n_train"],
                                                                                          manifest["n_val"]):
            manifest = None
    except (OSError, ValueError, KeyError):
        manifest = None
    if manifest is None:
        train, n_train_docs = mix(source.train, cfg, "train", source.content_hash)
        val, n_val_docs = mix(source.val, cfg, "val", source.content_hash)
        digest = hashlib.sha256(f"{source.content_hash}|{key}|".encode() + train.tobytes() + val.tobytes())
        manifest = {"content_hash": digest.hexdigest()[:16], "n_train": int(train.size), "n_val": int(val.size),
                    "train_documents": n_train_docs, "val_documents": n_val_docs, "settings": json.loads(settings)}
        write_split(stem, train, val, manifest)
    rule = (f"{source.split_rule}; task documents at rate {cfg.rate} (train: instances not held out, val: "
            f"held out, heldout_fraction {cfg.heldout_fraction})")
    return replace(source, name=f"{source.name}+tasks", content_hash=manifest["content_hash"],
                   train=np.memmap(f"{stem}.train.bin", dtype=np.uint8, mode="r"),
                   val=np.memmap(f"{stem}.val.bin", dtype=np.uint8, mode="r"), split_rule=rule, optimal_nll=None,
                   true_exponents=None)
