"""O-LoRA's prompt format (benchmark_protocol.md §2) and a task's token ids for training and testing.

The source string of a record (O-LoRA ``src/uie_dataset_lora.py`` + ``src/uie_collator.py``, with
``add_task_name``/``add_dataset_name`` on, as in every run script)::

    Task:<type>\\n
    Dataset:<name>\\n
    <instruction>\\n
    Option: <labels joined by ", "> \\n        <- note the space before the newline
    <sentence>\\n
    Answer:

COPA has no instruction: ``Task:COPA\\nDataset:COPA\\n<sentence>\\nAnswer:``. With
``with_task_prefix=False`` the two prefix lines are left out (the task identity is then not given
in the input, a stricter setting than the protocol's).

Token ids (``encode_task``): the prompt is ``[BOS if the tokenizer adds one] + ids(head) +
ids(sentence) + ids("\\nAnswer:")``, each piece tokenized on its own, and the answer is
``ids(" " + label) + [EOS]``. Only the sentence's ids are cut (from the right), so that every
prompt + ``answer_len`` ≤ ``max_length``; the instruction, options and ``Answer:`` always survive.
O-LoRA instead cuts ``prompt + label`` at the token limit, which can drop ``Answer:`` and the label
itself; its limit is 512 source tokens (§2), our default ``max_length`` covers prompt and answer.
The same sentence gives the same prompt ids at training and test time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from jaxcl.data.benchmark import TaskData

ANSWER_SUFFIX = "\nAnswer:"


def _head(task: TaskData, with_task_prefix: bool) -> str:
    """The prompt text before the sentence."""
    head = f"Task:{task.task_type}\nDataset:{task.name}\n" if with_task_prefix else ""
    if task.instruction is not None:
        head += task.instruction + "\n" + "Option: " + ", ".join(task.labels) + " \n"
    return head


def format_prompt(task: TaskData, sentence: str, with_task_prefix: bool = True) -> str:
    """The O-LoRA source string of ``sentence`` for ``task`` (module docstring), ending in ``Answer:``."""
    return _head(task, with_task_prefix) + sentence + ANSWER_SUFFIX


@dataclass
class EncodedTask:
    """Token ids of a task (lists of python ints).

    ``train_prompts[i] + train_answers[i]`` is one training sequence (answer = label + EOS);
    ``test_prompts[i]`` is a generation prompt whose reference is ``test_labels[i]``;
    ``answer_len`` the longest answer over the task's labels (EOS included), the ``A`` of a batch
    and enough new tokens to generate any label. ``label_answers`` maps label -> answer ids;
    ``n_truncated`` counts the (train, test) sentences that were cut.
    """

    name: str
    train_prompts: list[list[int]]
    train_answers: list[list[int]]
    test_prompts: list[list[int]]
    test_labels: list[str]
    answer_len: int
    label_answers: dict[str, list[int]] = field(default_factory=dict)
    n_truncated: tuple[int, int] = (0, 0)


def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """One batched tokenizer call, no special tokens."""
    if not texts:
        return []
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text by itself (a LLaMA-2 BOS; none for SmolLM2)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if list(full[k:k + len(plain)]) == list(plain):
            return list(full[:k])
    return []


def encode_task(task: TaskData, tokenizer: Any, max_length: int = 512,
                with_task_prefix: bool = True) -> EncodedTask:
    """Tokenize a task's prompts and answers (module docstring) in two batched tokenizer calls."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id (answers end in EOS)")
    pieces = _ids(tokenizer, [_head(task, with_task_prefix), ANSWER_SUFFIX] + [" " + c for c in task.labels])
    head, tail = _leading_special_ids(tokenizer) + pieces[0], pieces[1]
    label_answers = {c: ids + [tokenizer.eos_token_id] for c, ids in zip(task.labels, pieces[2:])}
    answer_len = max(len(a) for a in label_answers.values())
    budget = max_length - len(head) - len(tail) - answer_len
    if budget < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for a sentence in task {task.name!r}: "
            f"{len(head)} head + {len(tail)} 'Answer:' + {answer_len} answer tokens"
        )
    sentences = _ids(tokenizer, [e.sentence for e in task.train] + [e.sentence for e in task.test])
    prompts = [head + s[:budget] + tail for s in sentences]
    cut = [len(s) > budget for s in sentences]
    n = len(task.train)
    return EncodedTask(
        name=task.name,
        train_prompts=prompts[:n],
        train_answers=[list(label_answers[e.label]) for e in task.train],
        test_prompts=prompts[n:],
        test_labels=[e.label for e in task.test],
        answer_len=answer_len,
        label_answers=label_answers,
        n_truncated=(sum(cut[:n]), sum(cut[n:])),
    )
