"""The CL_Benchmark data layer: tasks and orders, O-LoRA prompts and token ids, fixed-shape batches.

    tasks = load_stream(task_order("standard", 1), max_train=400, max_test=200)
    enc = encode_task(tasks[0], tokenizer)
    for batch in train_batches(enc.train_prompts, enc.train_answers, 8, pad_id, enc.answer_len): ...

Without ``data_dir`` (and without ``$JAXCL_DATA_DIR``) the embedded subset of the 4 Standard-CL
tasks is used (``jaxcl/data/embedded/PROVENANCE.md``).
"""

from jaxcl.data.batching import DEFAULT_BUCKETS, eval_batches, train_batches
from jaxcl.data.benchmark import (
    BENCHMARKS,
    Example,
    TaskData,
    available_tasks,
    find_data_dir,
    load_stream,
    load_task,
    task_order,
)
from jaxcl.data.prompts import EncodedTask, encode_task, format_prompt

__all__ = [
    "BENCHMARKS", "DEFAULT_BUCKETS", "EncodedTask", "Example", "TaskData", "available_tasks",
    "encode_task", "eval_batches", "find_data_dir", "format_prompt", "load_stream", "load_task",
    "task_order", "train_batches",
]
