"""The streaming precompute driver (issue 18): inputs validated and planned in bounded memory, shards planned
from byte offsets, records read by the actors by byte range.

    pytest tests/test_streaming.py
"""

from __future__ import annotations

import json
import pickle
import random
import tracemalloc
from pathlib import Path

import pytest
from xel.precompute import schema
from xel.precompute.config import PrecomputeConfig
from xel.precompute.plan import plan_tasks
from xel.precompute.schema import InputError, load_inputs, read_records, scan_inputs
from xel.precompute.worker import task_items

from tests.conftest import KB, MENTIONS, write_jsonl

SETTINGS = {"encoder": "test", "layer": -1, "max_length": None, "prefix": "", "dtype": "fp32", "shard_size": 0,
            "kinds": ["ec", "es", "mc", "ms"], "max_tokens_per_batch": None}
WORDS = "Barack Obama Moscow Paris London Tokyo Senate Republic Berlin Merkel city river capital Мишель 北京".split()


def synthetic(data: Path, n: int, seed: int = 0, mentions: int | None = None) -> Path:
    """``n`` KB entries of ~0.2 kB and ``mentions`` (default ``n``) mentions, streamed to disk."""
    rng = random.Random(seed)
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "kb.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"Q{i}", "name": " ".join(rng.choices(WORDS, k=3)),
                                "description": " ".join(rng.choices(WORDS, k=12)), "lang": "en", "links": i},
                               ensure_ascii=False) + "\n")
    with open(data / "mentions.jsonl", "w", encoding="utf-8") as f:
        for i in range(n if mentions is None else mentions):
            sentence = "Obama " + " ".join(rng.choices(WORDS, k=20))
            f.write(json.dumps({"id": f"m{i}", "lang": "en", "sentence": sentence, "start": 0, "end": 5,
                                "context": None, "gold": f"Q{rng.randrange(n)}"}, ensure_ascii=False) + "\n")
    return data


def plan_peak(data: Path, out: Path) -> tuple[int, int]:
    """tracemalloc peak (bytes) of validating and planning ``data`` as xel-precompute does, and the rows planned."""
    cfg = PrecomputeConfig(data=data, model=Path("unused"), out=out, kinds=("es",), shard_size=256)
    tracemalloc.start()
    try:
        plan = plan_tasks(cfg, scan_inputs(data, cfg.shard_size), SETTINGS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, sum(t.rows for tasks in plan.tasks.values() for t in tasks)


def test_driver_memory_does_not_grow_with_the_number_of_texts(tmp_path):
    """Validating and planning 10x more texts stays under the same bound: a few bytes a text (id and row digests,
    ~15 B measured), not the records and their items (~0.7 kB a KB entry, which the driver used to hold: 6.9 MB of
    records and ``es`` items alone at 10k, before row hashes and tasks)."""
    small, small_rows = plan_peak(synthetic(tmp_path / "small", 1_000, mentions=100), tmp_path / "out-small")
    large, large_rows = plan_peak(synthetic(tmp_path / "large", 10_000, mentions=100), tmp_path / "out-large")
    assert (small_rows, large_rows) == (1_000, 10_000)
    bound = 2 << 20
    assert small < bound and large < bound, f"peaks {small / 2**20:.2f} / {large / 2**20:.2f} MiB"
    per_text = (large - small) / 9_000
    assert per_text < 64, f"{per_text:.0f} bytes a text"


def test_records_read_by_byte_range_equal_the_records_read_whole(tmp_path):
    rng = random.Random(1)
    kb = [{"id": f"Q{i}", "name": rng.choice(WORDS) + f" {i}", "description": None if i % 3 else "北京 " * (i + 1),
           "lang": "en", "links": None} for i in range(103)]
    lines = [json.dumps(r, ensure_ascii=False) for r in kb]
    text = "".join(line + "\n" + ("\n  \n" if i % 17 == 0 else "") for i, line in enumerate(lines))  # blank lines
    data = tmp_path / "data"
    data.mkdir()
    (data / "kb.jsonl").write_text(text, encoding="utf-8")
    write_jsonl(data / "mentions.jsonl", [dict(m, gold=None) for m in MENTIONS])
    whole = read_records(data / "kb.jsonl", "kb")
    assert len(whole) == 103
    for every in (1, 2, 7, 50, 103, 500):
        index = scan_inputs(data, every).files["kb"]
        parts = []
        for shard, (start, rows, begin, end) in enumerate(index.ranges()):
            part = read_records(index.path, "kb", begin, end, index.starts[shard][1])
            assert len(part) == rows and start == len(parts)
            parts.extend(part)
        assert parts == whole, f"every={every}"


def test_the_driver_ships_byte_ranges_not_records(tmp_path):
    """A task is a byte range and hashes, whatever its records weigh; the actor reads the records itself."""
    data = synthetic(tmp_path / "data", 300)
    cfg = PrecomputeConfig(data=data, model=Path("unused"), out=tmp_path / "h5", kinds=("mc", "es"), shard_size=128)
    plan = plan_tasks(cfg, scan_inputs(data, cfg.shard_size), SETTINGS)
    inputs = load_inputs(data)
    for kind, records in (("mc", inputs.mentions), ("es", inputs.kb)):
        tasks = plan.tasks[kind]
        assert [t.rows for t in tasks] == [128, 128, 44]
        assert all(len(pickle.dumps(t)) < 1024 for t in tasks)
        read = [item.id for t in tasks for item in task_items(t)]
        assert read == [r.id for r in records]
    assert [json.loads(line) for line in (cfg.out / "inputs" / "kb.jsonl").read_text().splitlines()] == \
        [dict(r.__dict__) for r in inputs.kb]


def test_an_input_edited_after_planning_is_refused_by_the_actor(tmp_path):
    data = synthetic(tmp_path / "data", 20)
    cfg = PrecomputeConfig(data=data, model=Path("unused"), out=tmp_path / "h5", kinds=("es",), shard_size=8)
    task = plan_tasks(cfg, scan_inputs(data, cfg.shard_size), SETTINGS).tasks["es"][1]
    lines = (data / "kb.jsonl").read_text(encoding="utf-8").splitlines()
    lines[9] = lines[9].replace('"name": "', '"name": "Edited ')
    (data / "kb.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"kb.jsonl: lines from 9 \(shard es:1\) changed"):
        task_items(task)


def _write(data: Path, kb: list[dict], mentions: list[dict]) -> Path:
    write_jsonl(data / "kb.jsonl", kb)
    write_jsonl(data / "mentions.jsonl", mentions)
    return data


BIG_KB = [{"id": f"Q{i}", "name": f"Entity {i}", "description": None, "lang": "en", "links": None}
          for i in range(1, 3000)]


@pytest.mark.parametrize("digest", ["blake2b", "colliding"])
@pytest.mark.parametrize(("kb_patch", "mention_patch", "expected"), [
    ({2500: {"id": "Q7"}}, {}, "kb.jsonl:2501: field 'id' is 'Q7', a duplicate of line 7; must be unique"),
    ({}, {5: {"id": "m2"}}, "mentions.jsonl:6: field 'id' is 'm2', a duplicate of line 2; must be unique"),
    ({}, {5: {"gold": "Q99999"}}, "mentions.jsonl:6: field 'gold' is 'Q99999', which is not an id in the KB"),
    ({}, {4: {"candidates": ["Q1", "Q3000"]}}, "mentions.jsonl:5: field 'candidates' holds 'Q3000', which is not"),
    # the first bad line wins, whichever check finds it: a duplicate before a bad field, a bad field before a duplicate
    ({}, {3: {"id": "m1"}, 5: {"lang": "xx"}}, "mentions.jsonl:4: field 'id' is 'm1', a duplicate of line 1"),
    ({}, {3: {"lang": "xx"}, 5: {"id": "m1"}}, "mentions.jsonl:4: field 'lang' is 'xx'"),
    ({2900: {"id": "Q5"}, 10: {"lang": "xx"}}, {}, "kb.jsonl:11: field 'lang' is 'xx'"),
    ({}, {}, None),
])
def test_duplicates_and_golds_outside_the_kb_are_refused_with_file_and_line_when_streamed(
        tmp_path, monkeypatch, digest, kb_patch, mention_patch, expected):
    """The same messages as the in-memory checks had; with every digest colliding (ids of equal length share
    one), the exact comparison behind the digests still finds exactly the true duplicates and KB ids."""
    if digest == "colliding":
        monkeypatch.setattr(schema, "id_digest", lambda ident: len(ident))
    kb = [{**e, **kb_patch.get(i, {})} for i, e in enumerate(BIG_KB)]
    mentions = [{**m, "id": f"m{i + 1}", "gold": f"Q{i + 1}", **mention_patch.get(i, {})}
                for i, m in enumerate(MENTIONS)]
    data = _write(tmp_path / "data", kb, mentions)
    if expected is None:
        scanned = scan_inputs(data, every=100)
        assert (scanned.files["kb"].rows, scanned.files["mentions"].rows) == (len(kb), len(mentions))
        return
    with pytest.raises(InputError) as caught:
        scan_inputs(data, every=100)
    assert expected in str(caught.value)
    assert str(caught.value).startswith(str(data))


def test_a_kb_digest_hit_is_checked_against_the_id_itself(monkeypatch):
    """A gold whose digest equals a KB id's digest is still refused unless it is that id."""
    monkeypatch.setattr(schema, "id_digest", lambda ident: 42)
    ids = schema.IdDigests(Path("kb.jsonl"), keep_ids=True)
    for lineno, entry in enumerate(KB, start=1):
        ids.add(entry["id"], lineno)
    ids.freeze()
    assert all(e["id"] in ids for e in KB)
    assert "Q6" not in ids and "Q" not in ids and "Q11" not in ids and 1 not in ids


DRIVER_UNTIL_THE_ACTORS = """
import json, sys
from contextlib import nullcontext
import xel.precompute.run as run

def execute(cfg, encoder, tasks, reuse=None):  # where the actors would start: report what the driver loaded
    print(json.dumps({"tasks": len(tasks), "modules": sorted(sys.modules)}))
    raise SystemExit(0)

run.ray_session, run.execute = (lambda address=None: nullcontext()), execute
from xel.precompute.cli import main
main(sys.argv[1:], standalone_mode=False)
"""


def test_the_precompute_driver_loads_neither_torch_nor_transformers(tiny_data, tiny_model_dir, tmp_path):
    """``xel-precompute`` up to the actors' start (flags, inputs scanned and hashed, the model hashed, the encoder
    resolved for the actors' device, shards planned) in a fresh process: only the actors load torch and
    transformers (the driver used to load torch before Ray started; bench/precompute_start.py measures the cost)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", DRIVER_UNTIL_THE_ACTORS, "--data", str(tiny_data), "--model",
                          str(tiny_model_dir), "--out", str(tmp_path / "h5"), "--dtype", "fp32"],
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["tasks"] > 0  # the driver planned shards: it got as far as starting the actors
    heavy = sorted(m for m in report["modules"] if m.split(".")[0] in ("torch", "transformers"))
    assert not heavy, heavy[:10]
