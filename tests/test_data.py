"""The data layer: task orders, loading and its errors, caps and held-out tests, prompts, batches."""

import collections
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxcl.batch import collate_train
from jaxcl.data import (
    BENCHMARKS, Example, TaskData, encode_task, eval_batches, find_data_dir, format_prompt,
    load_stream, load_task, task_order, train_batches,
)
from jaxcl.data.benchmark import EMBEDDED_DIR, stratified_indices

FULL = Path("/work/shared/cl_benchmark")
TC_INSTRUCTION = "What is the topic of the following paragraph? Choose one from the option."


@pytest.fixture(scope="module")
def tokenizer():
    from jaxcl.models.pretrained import embedded_model_path, load_tokenizer

    return load_tokenizer(embedded_model_path("smollm2-135m"))


def _copy_task(tmp_path: Path, task: str = "agnews", kind: str = "TC") -> Path:
    """A writable data folder holding the embedded ``task``, its splits as plain .json."""
    src = EMBEDDED_DIR / "CL_Benchmark" / kind / task
    dst = tmp_path / "CL_Benchmark" / kind / task
    dst.mkdir(parents=True)
    shutil.copyfile(src / "labels.json", dst / "labels.json")
    for split in ("train", "test"):
        (dst / f"{split}.json").write_bytes(gzip.decompress((src / f"{split}.json.gz").read_bytes()))
    (tmp_path / "configs").mkdir()
    shutil.copyfile(EMBEDDED_DIR / "configs" / "instruction_config.json", tmp_path / "configs" / "instruction_config.json")
    return dst


# --- orders -------------------------------------------------------------------------------------

def test_orders_match_protocol():
    # benchmark_protocol.md §3, copied by hand
    assert BENCHMARKS["standard"] == {
        1: "dbpedia amazon yahoo agnews".split(),
        2: "dbpedia amazon agnews yahoo".split(),
        3: "yahoo amazon agnews dbpedia".split(),
    }
    assert BENCHMARKS["long"] == {
        4: "MNLI CB WiC COPA QQP BoolQA RTE IMDB yelp amazon SST-2 dbpedia agnews MultiRC yahoo".split(),
        5: "MultiRC BoolQA WiC MNLI CB COPA QQP RTE IMDB SST-2 dbpedia agnews yelp amazon yahoo".split(),
        6: "yelp amazon MNLI CB COPA QQP RTE IMDB SST-2 dbpedia agnews yahoo MultiRC BoolQA WiC".split(),
    }
    for order in BENCHMARKS["long"].values():
        assert sorted(order) == sorted(BENCHMARKS["long"][6])  # the same 15 tasks
    order = task_order("long", 6)
    order.append("x")
    assert task_order("long", 6) == BENCHMARKS["long"][6]  # a fresh list
    with pytest.raises(ValueError, match="valid: \\['long', 'standard'\\]"):
        task_order("short", 1)
    with pytest.raises(ValueError, match="valid orders: \\[1, 2, 3\\]"):
        task_order("standard", 4)


@pytest.mark.skipif(not FULL.is_dir(), reason="the full CL_Benchmark is not here")
def test_every_ordered_task_is_in_the_full_data():
    names = {n for b in BENCHMARKS.values() for o in b.values() for n in o}
    dirs = {p.name for p in (FULL / "CL_Benchmark").glob("*/*")}
    assert names <= dirs


def test_find_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXCL_DATA_DIR", raising=False)
    assert find_data_dir() == EMBEDDED_DIR
    with pytest.raises(FileNotFoundError, match="instruction_config.json"):
        find_data_dir(tmp_path)
    _copy_task(tmp_path)
    assert find_data_dir(tmp_path) == tmp_path
    assert find_data_dir(tmp_path / "CL_Benchmark") == tmp_path
    monkeypatch.setenv("JAXCL_DATA_DIR", str(tmp_path))
    assert find_data_dir() == tmp_path
    monkeypatch.setenv("JAXCL_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="JAXCL_DATA_DIR"):
        find_data_dir()


# --- loading ------------------------------------------------------------------------------------

def test_embedded_standard_stream():
    tasks = load_stream(task_order("standard", 1), EMBEDDED_DIR)
    assert [t.name for t in tasks] == ["dbpedia", "amazon", "yahoo", "agnews"]
    for t in tasks:
        assert (len(t.train), len(t.test)) == (400, 200) and not t.test_from_train
        assert {e.label for e in t.train} == set(t.labels) == {e.label for e in t.test}
    agnews = tasks[3]
    assert agnews.task_type == "TC" and agnews.instruction == TC_INSTRUCTION
    assert agnews.labels == ["World", "Sports", "Business", "Science or Technology"]


def test_caps_are_stratified_deterministic_and_seeded():
    a = load_task("agnews", EMBEDDED_DIR, max_train=100, max_test=40, seed=0)
    b = load_task("agnews", EMBEDDED_DIR, max_train=100, max_test=40, seed=0)
    c = load_task("agnews", EMBEDDED_DIR, max_train=100, max_test=40, seed=1)
    assert a.train == b.train and a.test == b.test
    assert a.train != c.train and a.test == c.test  # the test draw does not depend on the seed
    counts = collections.Counter(e.label for e in a.train)
    assert sum(counts.values()) == 100 and max(counts.values()) - min(counts.values()) <= 2
    assert collections.Counter(e.label for e in a.test) == {lab: 10 for lab in a.labels}
    full = load_task("agnews", EMBEDDED_DIR)
    positions = [full.train.index(e) for e in a.train]
    assert positions == sorted(set(positions))  # distinct records, kept in file order


def test_stratified_indices_proportional():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    idx = stratified_indices(labels, 20, np.random.default_rng(0))
    assert collections.Counter(labels[i] for i in idx) == {"a": 12, "b": 6, "c": 2}
    assert list(idx) == sorted(set(idx.tolist()))
    # largest remainder: 7 of (5, 3, 2) -> exact 3.5, 2.1, 1.4 -> 3, 2, 1 + one to "a"
    labels = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    idx = stratified_indices(labels, 7, np.random.default_rng(0))
    assert collections.Counter(labels[i] for i in idx) == {"a": 4, "b": 2, "c": 1}
    assert len(stratified_indices(labels, None, np.random.default_rng(0))) == 10


def test_held_out_test_is_disjoint_and_fixed(tmp_path):
    task_dir = _copy_task(tmp_path)
    (task_dir / "test.json").unlink()
    t = load_task("agnews", tmp_path, holdout=0.25)
    assert t.test_from_train and (len(t.train), len(t.test)) == (300, 100)
    train_set = {(e.sentence, e.label) for e in t.train}
    assert not train_set & {(e.sentence, e.label) for e in t.test}
    everything = json.loads((task_dir / "train.json").read_text())
    assert train_set | {(e.sentence, e.label) for e in t.test} == {(r["sentence"], r["label"]) for r in everything}
    counts = collections.Counter(e.label for e in t.test)
    assert max(counts.values()) - min(counts.values()) <= 2
    capped = load_task("agnews", tmp_path, max_train=50, max_test=20, seed=3, holdout=0.25)
    assert {(e.sentence, e.label) for e in capped.train} <= train_set  # caps never reach the held-out part
    assert capped.test == load_task("agnews", tmp_path, max_test=20, seed=7, holdout=0.25).test
    assert load_task("agnews", tmp_path, holdout=40).test_from_train
    assert len(load_task("agnews", tmp_path, holdout=40).test) == 40


def test_reads_plain_and_gzip_json(tmp_path):
    _copy_task(tmp_path)
    assert load_task("AGNEWS", tmp_path).train == load_task("agnews", EMBEDDED_DIR).train


@pytest.mark.parametrize("case", ["bad_json", "no_sentence", "bad_label", "not_a_list", "unlabelled_train"])
def test_malformed_files_name_the_file_and_record(tmp_path, case):
    task_dir = _copy_task(tmp_path)
    path = task_dir / "train.json"
    records = json.loads(path.read_text())
    if case == "bad_json":
        path.write_text(path.read_text()[:-20])
        match = "train.json: invalid JSON"
    elif case == "no_sentence":
        del records[7]["sentence"]
        path.write_text(json.dumps(records))
        match = "train.json: record 7 has no 'sentence' field"
    elif case == "bad_label":
        records[12]["label"] = "Weather"
        path.write_text(json.dumps(records))
        match = "train.json: record 12: label 'Weather' is not in labels.json"
    elif case == "not_a_list":
        path.write_text(json.dumps({"records": records}))
        match = "train.json: expected a JSON list"
    else:  # "-" is accepted in test files only (MNLI)
        records[3]["label"] = "-"
        path.write_text(json.dumps(records))
        match = "train.json: record 3: label '-'"
    with pytest.raises(ValueError, match=match) as info:
        load_task("agnews", tmp_path)
    assert str(task_dir) in str(info.value)


def test_missing_pieces(tmp_path):
    task_dir = _copy_task(tmp_path)
    with pytest.raises(ValueError, match="unknown task 'mnli'.*available: \\['agnews'\\]"):
        load_task("mnli", tmp_path)
    with pytest.raises(ValueError, match="set \\$JAXCL_DATA_DIR"):
        load_task("MNLI", EMBEDDED_DIR)
    (task_dir / "labels.json").unlink()
    with pytest.raises(FileNotFoundError, match="agnews/labels.json is missing"):
        load_task("agnews", tmp_path)
    test = json.loads((task_dir / "test.json").read_text())
    test[0]["label"] = "-"
    (task_dir / "test.json").write_text(json.dumps(test))
    (task_dir / "labels.json").write_text(json.dumps(["World", "Sports", "Business", "Science or Technology"]))
    assert load_task("agnews", tmp_path).test[0].label == "-"


# --- prompts ------------------------------------------------------------------------------------

def _tc_task(sentence="Title: Intel chips\nText: Reuters - Intel Corp. ...", label="Science or Technology"):
    return TaskData("agnews", "TC", ["World", "Sports", "Business", "Science or Technology"], TC_INSTRUCTION,
                    [Example(sentence, label)], [Example(sentence, label)], False, "")


def test_prompt_format_is_olora_exact():
    task = load_task("agnews", EMBEDDED_DIR, max_train=1)
    s = "Title: Intel Seen Readying New Wi-Fi Chips (Reuters)\nText: Reuters - Intel Corp. ..."
    assert format_prompt(task, s) == (
        "Task:TC\nDataset:agnews\n"
        "What is the topic of the following paragraph? Choose one from the option.\n"
        "Option: World, Sports, Business, Science or Technology \n"
        "Title: Intel Seen Readying New Wi-Fi Chips (Reuters)\nText: Reuters - Intel Corp. ...\n"
        "Answer:"
    )
    assert format_prompt(task, "x", with_task_prefix=False) == (
        "What is the topic of the following paragraph? Choose one from the option.\n"
        "Option: World, Sports, Business, Science or Technology \nx\nAnswer:"
    )
    copa = TaskData("COPA", "COPA", ["A", "B"], None, [], [], False, "")
    q = 'Which sentence is the cause of "The man fell."? Choose one between A and B.\nA: He slipped.\nB: He ate.'
    assert format_prompt(copa, q) == "Task:COPA\nDataset:COPA\n" + q + "\nAnswer:"
    assert format_prompt(copa, q, with_task_prefix=False) == q + "\nAnswer:"


@pytest.mark.skipif(not FULL.is_dir(), reason="the full CL_Benchmark is not here")
def test_copa_from_the_full_data_has_no_instruction():
    copa = load_task("COPA", FULL, max_train=2, max_test=2)
    assert copa.instruction is None and copa.task_type == "COPA"
    assert format_prompt(copa, copa.test[0].sentence) == "Task:COPA\nDataset:COPA\n" + copa.test[0].sentence + "\nAnswer:"


def test_encode_task_round_trips_and_answers(tokenizer):
    task = load_task("agnews", EMBEDDED_DIR, max_train=8, max_test=8)
    enc = encode_task(task, tokenizer, max_length=512)
    eos = tokenizer.eos_token_id
    assert len(enc.train_prompts) == len(enc.train_answers) == 8 and len(enc.test_prompts) == 8
    assert enc.test_labels == [e.label for e in task.test]
    for ex, prompt, answer in zip(task.train, enc.train_prompts, enc.train_answers):
        assert tokenizer.decode(prompt) == format_prompt(task, ex.sentence)
        assert answer == tokenizer(" " + ex.label, add_special_tokens=False)["input_ids"] + [eos]
    assert enc.answer_len == max(len(tokenizer(" " + c, add_special_tokens=False)["input_ids"]) + 1 for c in task.labels)
    bare = encode_task(task, tokenizer, with_task_prefix=False)
    assert tokenizer.decode(bare.test_prompts[0]) == format_prompt(task, task.test[0].sentence, with_task_prefix=False)


def test_truncation_cuts_only_the_sentence(tokenizer):
    long_sentence = "Title: A long story\nText: " + " ".join(f"word{i}" for i in range(400))
    task = _tc_task(long_sentence)
    short = encode_task(task, tokenizer, max_length=96)
    head = tokenizer(format_prompt(task, "").split("\nAnswer:")[0], add_special_tokens=False)["input_ids"]
    tail = tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]
    for prompt in short.train_prompts + short.test_prompts:
        assert len(prompt) + short.answer_len == 96
        assert prompt[: len(head)] == head and prompt[-len(tail):] == tail
        text = tokenizer.decode(prompt)
        assert text.startswith("Task:TC\nDataset:agnews\n" + TC_INSTRUCTION + "\nOption: World, Sports, Business, "
                               "Science or Technology \nTitle: A long story\nText: word0 word1")
        assert text.endswith("\nAnswer:") and "word399" not in text
    assert short.n_truncated == (1, 1)
    assert len(short.train_prompts[0]) + len(short.train_answers[0]) <= 96
    with pytest.raises(ValueError, match="no room for a sentence"):
        encode_task(task, tokenizer, max_length=40)


# --- batches ------------------------------------------------------------------------------------

def _toy(n=37, seed=0):
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(3, 90, rng.integers(2, 200))) for _ in range(n)]
    answers = [list(rng.integers(3, 90, rng.integers(1, 4))) + [2] for _ in range(n)]
    return prompts, answers


def test_train_batches_shapes_targets_and_coverage():
    prompts, answers = _toy()
    batches = train_batches(prompts, answers, 8, 0, 4, buckets=(64, 128, 256), seed=0, epoch=0)
    assert len({b["tokens"].shape for b in batches}) <= 3
    assert {b["target_ids"].shape for b in batches} == {(8, 4)}
    seen = []
    for b in batches:
        assert b["tokens"].dtype == np.int32 and b["target_mask"].dtype == np.float32
        rows, cols = np.nonzero(b["target_mask"])
        np.testing.assert_array_equal(b["tokens"][rows, b["target_pos"][rows, cols] + 1], b["target_ids"][rows, cols])
        for r in range(8):
            n = int(b["attention_mask"][r].sum())
            if b["target_mask"][r].sum():
                seen.append(tuple(b["tokens"][r, :n]))
            else:
                assert n == 0 and not b["tokens"][r].any()  # a padding row
    assert sorted(seen) == sorted(tuple(p + a) for p, a in zip(prompts, answers))
    for b in batches:  # each example sits in the smallest bucket that holds it
        T = b["tokens"].shape[1]
        lengths = b["attention_mask"].sum(1)[b["target_mask"].sum(1) > 0]
        lower = {64: 0, 128: 64, 256: 128}[T]
        assert ((lengths > lower) & (lengths <= T)).all()


def test_train_batches_deterministic_shuffle_and_drop_last():
    prompts, answers = _toy()
    first = lambda bs: [tuple(b["tokens"][0, :5]) for b in bs]  # noqa: E731
    a = train_batches(prompts, answers, 8, 0, 4, seed=1, epoch=0)
    assert first(a) == first(train_batches(prompts, answers, 8, 0, 4, seed=1, epoch=0))
    assert first(a) != first(train_batches(prompts, answers, 8, 0, 4, seed=1, epoch=1))
    assert first(a) != first(train_batches(prompts, answers, 8, 0, 4, seed=2, epoch=0))
    dropped = train_batches(prompts, answers, 8, 0, 4, seed=1, drop_last=True)
    assert all(b["target_mask"][:, 0].all() for b in dropped)
    assert sum(int(b["target_mask"][:, 0].sum()) for b in a) == 37
    ref = collate_train(prompts[:1], answers[:1], 0, length=256, answer_len=4)
    one = train_batches(prompts[:1], answers[:1], 2, 0, 4, buckets=(256,))
    for key in ref:
        np.testing.assert_array_equal(one[0][key][:1], ref[key])
    with pytest.raises(ValueError, match="more than the largest bucket 64"):
        train_batches(prompts, answers, 8, 0, 4, buckets=(64,))


def test_eval_batches_left_padded(tokenizer):
    task = load_task("agnews", EMBEDDED_DIR, max_test=13)
    prompts = encode_task(task, tokenizer).test_prompts
    batches = eval_batches(prompts, 4, 2, buckets=(64, 128, 512))
    got = []
    for tokens, mask, index in batches:
        assert tokens.shape == mask.shape and tokens.shape[0] == 4 and tokens.dtype == np.int32
        assert tokens.shape[1] in (64, 128, 512) and 1 <= len(index) <= 4
        for r, i in enumerate(index):
            n = len(prompts[i])
            assert list(tokens[r, -n:]) == prompts[i] and mask[r, -n:].all() and not mask[r, :-n].any()
        assert not mask[len(index):].any()
        got += index
    assert sorted(got) == list(range(13))
