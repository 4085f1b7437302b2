"""Fault injection: SIGKILL at random moments, and checkpoints corrupted on disk.

Extraction. A child process extracts a small phantom cohort (12 bags in 4 store chunks of 3,
68-85 encoder inputs a bag in batches of 8: about 115 encoder calls) with the coupled stand-in
encoder of test_extract.py, whose rows depend on the batch they sit in. The parent SIGKILLs it,
resumes, and compares the store array by array with an uninterrupted run. Random moments come
from seeded generators: delays stratified over the measured length of an uninterrupted run (so
they fall everywhere from the plan pass to the last batch), or the index of the encoder call,
the file rename (zarr writes every file under a temporary name, then renames it) or the unlink
at which the child kills itself. A kill counts as landed only if it left work to resume. The
same for two `--shard` workers writing one store at once (killing either or both), and for
chains of kills inside the store's own writes: the first metadata write of a plan, the middle
of a plan, the clearing of an interrupted plan.

Checkpoints. Saves SIGKILLed at random moments (helpers.checkpoints.SAVER), every file of a step
deleted, truncated or hit by random byte flips, and directories holding other orbax
checkpoints: each must load the head exactly as saved or raise an error that names the folder
(and, for a bad latest step, the older step that `step=` loads).

The tests marked slow (about ten kills each, a few minutes in all) run with `-m slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.standin import Patch as _Patch
from helpers.standin import assert_same_store, install_standin, read_arrays
from helpers.standin import extract_cfg as cfg
from milpf_jax.data.store import DONE, Store
from milpf_jax.extraction.extract import extract
from milpf_jax.synthetic.phantom import PhantomConfig

# JAX, orbax and test_checkpoint are imported inside the checkpoint tests: the extraction
# children import this file and should start fast.

TESTS = Path(__file__).resolve().parent
# 256 x 208 px views at 0.8 mm (test_phantom.TINY), 6 patients = 12 bags.
PHANTOM = PhantomConfig(n_patients=6, rows=256, cols=208, pixel_spacing_mm=0.8, seed=7,
                        benign_fraction=0.1)  # fmt: skip
CHUNK_BAGS = 3
N_BAGS = 12
SHARD_BAGS = (range(6), range(6, 12))  # Store.shard_range(i, 2) of 4 chunks: 2 chunks each


def run_cfg(**changes):
    """32-px tiles area-resized to the stand-in's 16 px: ~35 tiles a view."""
    return cfg(tile_size=32, chunk_bags=CHUNK_BAGS, **changes)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> str:
    from milpf_jax.synthetic.phantom_files import make_phantom_cohort

    out = tmp_path_factory.mktemp("phantom")
    return str(make_phantom_cohort(out, PHANTOM, workers=1, progress=False))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, phantom) -> dict:
    """An uninterrupted run in this process: what every killed and resumed store must equal."""
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    with pytest.MonkeyPatch.context() as mp:
        install_standin(mp.setitem, mp.setattr, coupling=0.5)
        result = extract(phantom, run_cfg(), out, progress=False)
    assert (result.n_bags, result.done) == (N_BAGS, N_BAGS)
    store = Store.open(out)
    assert [store.shard_range(i, 2) for i in (0, 1)] == list(SHARD_BAGS)
    rows = store.array("global_mask").sum(1) + store.array("tiles_mask").sum(1)
    assert rows.min() > 3 * 8  # several batches a bag: kills land mid-bag too
    return read_arrays(out)


@pytest.fixture
def resumer(monkeypatch):
    """Resume in this process with the stand-in the children use."""
    install_standin(monkeypatch.setitem, monkeypatch.setattr, coupling=0.5)


# --- the child ----------------------------------------------------------------------------------

CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import test_fault_injection
test_fault_injection.child_main(json.loads(sys.argv[2]))
"""


def child_main(opts: dict) -> None:
    """One extraction with the coupled stand-in; prints 'ready' as it starts, 'done' at the end.

    opts: manifest, out; optional shard [i, n], workers, sleep (seconds per encoder call, to
    give encoding more of the run), kill_at_call (the n-th encoder call),
    kill_at_replace (the n-th os.replace: zarr renames each file it writes into place),
    kill_at_unlink (the n-th os.unlink or os.rmdir: clearing an interrupted plan).
    """
    install_standin(_Patch.setitem, setattr, coupling=0.5, kill_at_call=opts.get("kill_at_call"),
                    sleep=opts.get("sleep", 0.0))  # fmt: skip
    counts = {"replace": 0, "unlink": 0}

    def killing(real, kind):
        def call(*args, **kwargs):
            counts[kind] += 1
            if counts[kind] == opts[f"kill_at_{kind}"]:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return call

    for name, kind in (("replace", "replace"), ("unlink", "unlink"), ("rmdir", "unlink")):
        if opts.get(f"kill_at_{kind}"):
            setattr(os, name, killing(getattr(os, name), kind))
    print("ready", flush=True)
    extract(opts["manifest"], run_cfg(workers=opts.get("workers", 0)), opts["out"],
            shard=tuple(opts.get("shard", (0, 1))), progress=False, plan_wait_s=120)  # fmt: skip
    print("done", flush=True)


def start(opts: dict, log: Path) -> subprocess.Popen:
    """The child writes to `log`, not a pipe (a killed child's DataLoader worker may outlive it)."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-c", CHILD, str(TESTS), json.dumps(opts)],
                                stdout=f, stderr=subprocess.STDOUT)  # fmt: skip


def wait_ready(child: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> float:
    """time.monotonic() when the child has imported everything and calls extract."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if "ready\n" in log.read_text():
            return time.monotonic()
        if child.poll() is not None:
            raise AssertionError(f"child exited ({child.returncode}) early:\n{log.read_text()}")
        time.sleep(0.002)
    raise TimeoutError(f"child not ready after {timeout_s} s:\n{log.read_text()}")


def kill_at(child: subprocess.Popen, when: float) -> None:
    """SIGKILL the child at time.monotonic() == when (nothing happens if it has exited)."""
    time.sleep(max(0.0, when - time.monotonic()))
    child.kill()
    child.wait(timeout=60)


def finish(children: list[subprocess.Popen], logs: list[Path]) -> None:
    for child, log in zip(children, logs, strict=True):
        assert child.wait(timeout=300) == 0, log.read_text()


def progress_of(out: Path, bags: range = range(N_BAGS)) -> tuple[str, int]:
    """(phase, bags of `bags` done) of the store a killed run left behind."""
    if not out.exists():
        return "planning (reading images)", 0
    try:
        status = Store.open(out).status()[bags.start : bags.stop]
    except (FileNotFoundError, ValueError):
        return "planning (writing the store)", 0
    done = int(np.sum(status == DONE))
    return ("finished" if done == len(bags) else "encoding"), done


def report(kills: list[dict]) -> str:
    return "\n".join(" ".join(f"{k}={v}" for k, v in kill.items()) for kill in kills)


# --- extraction: fast ---------------------------------------------------------------------------


def test_two_shards_killed_at_random_encoder_calls_resume_to_one_workers_store(
    tmp_path, phantom, reference
):
    rng = np.random.default_rng(3)
    out = tmp_path / "s.zarr"
    opts = {"manifest": phantom, "out": str(out)}
    # Each shard encodes ~460 inputs, ~57 batches: both die mid-encoding.
    calls = [int(c) for c in rng.integers(1, 45, size=2)]
    logs = [tmp_path / f"killed{i}.log" for i in (0, 1)]
    children = [start({**opts, "shard": [i, 2], "kill_at_call": calls[i]}, logs[i]) for i in (1, 0)]
    for child in children:
        child.wait(timeout=300)
    for child, i in zip(children, (1, 0), strict=True):
        assert child.returncode == -signal.SIGKILL, logs[i].read_text()
        phase, done = progress_of(out, SHARD_BAGS[i])
        assert phase == "encoding", (i, calls, phase, done)
    logs = [tmp_path / f"resumed{i}.log" for i in (0, 1)]
    finish([start({**opts, "shard": [i, 2]}, logs[i]) for i in (0, 1)], logs)
    assert_same_store(reference, read_arrays(out))


def test_a_chain_of_kills_inside_the_stores_own_writes_resumes(tmp_path, phantom, reference,
                                                               resumer):  # fmt: skip
    """Killed at the plan's first rename, then mid-plan, then while clearing that plan.

    The first kill leaves a folder holding only zarr's `zarr.<hex>.partial`; the third a
    half-cleared plan, which has lost its group metadata if rmtree reached it first (rmtree
    follows the directory's order). Both were refused as "not a zarr store" before
    `extract._plan_leftovers`; now they are planned again.
    """
    rng = np.random.default_rng(5)
    out = tmp_path / "s.zarr"
    opts = {"manifest": phantom, "out": str(out)}
    steps = [{"kill_at_replace": 1}, {"kill_at_replace": int(rng.integers(20, 60))},
             {"kill_at_unlink": int(rng.integers(2, 12))}]  # fmt: skip
    for k, kill in enumerate(steps):
        log = tmp_path / f"child{k}.log"
        child = start({**opts, **kill}, log)
        assert child.wait(timeout=300) == -signal.SIGKILL, (kill, log.read_text())
        assert progress_of(out)[0] == "planning (writing the store)", kill
        if k == 0:
            [left] = os.listdir(out)
            assert left.startswith("zarr.") and left.endswith(".partial")
    result = extract(phantom, run_cfg(), out, progress=False)
    assert result.planned and result.done == N_BAGS
    assert_same_store(reference, read_arrays(out))


# --- extraction: slow, ten kills each -----------------------------------------------------------


@pytest.mark.slow
def test_ten_sigkills_at_random_moments_each_resume_to_the_same_store(
    tmp_path, phantom, reference, resumer
):
    rng = np.random.default_rng(2024)
    opts = {"manifest": phantom, "sleep": 0.03}
    # How long an uninterrupted child works, without and with a DataLoader worker process.
    span = {}
    for workers in (0, 1):
        out, log = tmp_path / f"whole{workers}.zarr", tmp_path / f"whole{workers}.log"
        child = start({**opts, "out": str(out), "workers": workers}, log)
        ready = wait_ready(child, log)
        finish([child], [log])
        span[workers] = time.monotonic() - ready
        assert_same_store(reference, read_arrays(out))
    kills = []
    for k in range(10):
        workers = k % 2
        delay = rng.uniform(k, k + 1) / 10 * span[workers]  # stratified over the run
        out, log = tmp_path / f"run{k}.zarr", tmp_path / f"run{k}.log"
        child = start({**opts, "out": str(out), "workers": workers}, log)
        kill_at(child, wait_ready(child, log) + delay)
        phase, done = progress_of(out)
        killed = child.returncode == -signal.SIGKILL
        kills.append({"run": k, "workers": workers, "delay_s": round(delay, 3),
                      "landed": killed and phase != "finished", "phase": phase,
                      "done": done})
        # A planned store keeps its batches of 8, whatever the rerun asks for.
        again = run_cfg(batch_size=5) if phase == "encoding" else run_cfg()
        result = extract(phantom, again, out, progress=False)
        assert (result.done, result.pending) == (N_BAGS, 0), report(kills)
        assert result.planned == phase.startswith("planning"), report(kills)
        assert_same_store(reference, read_arrays(out))
    print(f"\nrun spans {span}\n{report(kills)}")
    assert sum(kill["landed"] for kill in kills) >= 8, report(kills)
    assert any(kill["phase"].startswith("planning") for kill in kills), report(kills)
    assert any(kill["phase"] == "encoding" for kill in kills), report(kills)


@pytest.mark.slow
def test_two_shards_sigkilled_at_random_moments_resume_to_one_workers_store(
    tmp_path, phantom, reference
):
    rng = np.random.default_rng(99)

    def pair(out: Path, name: str, shards=(1, 0)):
        logs = {i: tmp_path / f"{name}-{i}.log" for i in shards}
        opts = {"manifest": phantom, "out": str(out), "sleep": 0.03}
        children = {i: start({**opts, "shard": [i, 2]}, logs[i]) for i in shards}
        return children, logs

    # How long each shard works when neither is killed (shard 1 waits for shard 0's plan).
    children, logs = pair(tmp_path / "whole.zarr", "whole")
    ready = max(wait_ready(children[i], logs[i]) for i in children)
    span = {}
    while len(span) < len(children):
        span.update({i: time.monotonic() - ready for i, child in children.items()
                     if i not in span and child.poll() is not None})  # fmt: skip
        time.sleep(0.002)
    finish(list(children.values()), list(logs.values()))
    assert_same_store(reference, read_arrays(tmp_path / "whole.zarr"))
    kills = []
    for k in range(10):
        victims = [(0,), (1,), (0, 1)][int(rng.integers(3))]
        out = tmp_path / f"run{k}.zarr"
        children, logs = pair(out, f"run{k}")
        ready = max(wait_ready(children[i], logs[i]) for i in children)
        # The first victim's moment is stratified over its run, a second one's uniform.
        moments = [rng.uniform(k, k + 1) / 10, rng.uniform(0, 1)][: len(victims)]
        moments = [m * span[i] for m, i in zip(moments, victims, strict=True)]
        for i, delay in sorted(zip(victims, moments, strict=True), key=lambda v: v[1]):
            kill_at(children[i], ready + delay)
            phase, done = progress_of(out, SHARD_BAGS[i])
            if i == 1 and phase.startswith("planning"):
                phase = "waiting for shard 0's plan"
            killed = children[i].returncode == -signal.SIGKILL
            kills.append({"run": k, "shard": i, "delay_s": round(delay, 3),
                          "landed": killed and phase != "finished", "phase": phase,
                          "done": done})  # fmt: skip
        again, more_logs = pair(out, f"again{k}", shards=victims)
        survivors = [i for i in children if i not in victims]
        finish([*(children[i] for i in survivors), *again.values()],
               [*(logs[i] for i in survivors), *more_logs.values()])  # fmt: skip
        assert_same_store(reference, read_arrays(out))
    print(f"\nshard spans {span}\n{report(kills)}")
    landed = sum(kill["landed"] for kill in kills)
    assert landed >= 0.8 * len(kills) and len(kills) >= 10, report(kills)


@pytest.mark.slow
def test_chains_of_kills_inside_the_stores_own_writes_resume(tmp_path, phantom, reference,
                                                             resumer):  # fmt: skip
    """Six chains: a kill at a random file rename (anywhere from the plan's first metadata
    write to the last bag's status), then, if that left an unfinished plan, a kill at a random
    unlink while clearing it; each chain resumes to the reference store."""
    rng = np.random.default_rng(17)
    kills = []
    for k in range(6):
        out = tmp_path / f"run{k}.zarr"
        opts = {"manifest": phantom, "out": str(out)}
        steps = [{"kill_at_replace": int(rng.integers(1, 108))},
                 {"kill_at_unlink": int(rng.integers(1, 26))}]  # fmt: skip
        for j, kill in enumerate(steps):
            if j and progress_of(out)[0] != "planning (writing the store)":
                break  # the first kill came after the plan: nothing to clear
            log = tmp_path / f"run{k}-{j}.log"
            child = start({**opts, **kill}, log)
            child.wait(timeout=300)
            phase, done = progress_of(out)
            left = os.listdir(out) if out.exists() else []
            kills.append({"run": k, **kill, "landed": child.returncode == -signal.SIGKILL
                          and phase != "finished", "phase": phase, "done": done,
                          "entries": len(left), "group_metadata": "zarr.json" in left})  # fmt: skip
        result = extract(phantom, run_cfg(), out, progress=False)
        assert result.done == N_BAGS, report(kills)
        assert_same_store(reference, read_arrays(out))
    print("\n" + report(kills))
    assert sum(kill["landed"] for kill in kills) >= 6, report(kills)


# --- checkpoints --------------------------------------------------------------------------------


def two_steps(directory: Path, dim: int):
    """Steps 0 and 1 of a checkpoint (seeds 0 and 1); returns the two heads and metadata."""
    from helpers.checkpoints import seeded_params
    from milpf_jax.learning.checkpoint import read_metadata, save_head
    from milpf_jax.learning.head import HeadConfig
    from milpf_jax.learning.inference import Head

    cfg = HeadConfig(dim=dim)
    heads = [Head(seeded_params(cfg, seed), cfg) for seed in (0, 1)]
    for seed, head in enumerate(heads):
        save_head(directory, head, {"seed": seed, "val_auc": 0.5 + seed / 10})
    return heads, [read_metadata(directory, step=s) for s in (0, 1)]


def load_outcome(directory: Path, heads, metadata) -> str:
    """'saved' when the latest step (1) loads exactly as saved, 'older step' when step 0 does
    (step 1 is no longer complete), 'error' for an error naming the directory and step=0, after
    which step 0 loads as saved. Anything else fails the test."""
    from helpers.checkpoints import assert_same_params
    from milpf_jax.learning.checkpoint import load_head, read_metadata

    try:
        head = load_head(directory)
        got = read_metadata(directory)
    except (ValueError, FileNotFoundError) as err:
        assert str(directory) in str(err) and "step=0" in str(err), err
        head, got = load_head(directory, step=0), read_metadata(directory, step=0)
        assert got == metadata[0]
        assert_same_params(head.params, heads[0].params)
        return "error"
    step = [m["seed"] for m in metadata].index(got["seed"])  # the latest that loads
    assert head.config == heads[step].config and got == metadata[step]
    assert_same_params(head.params, heads[step].params)
    return ["older step", "saved"][step]


def corrupt_each_file(base: Path, tmp_path: Path, heads, metadata, rng, corruptions):
    """Corrupt each file of step 1 in each way (delete, truncate at a random length, or flip
    1-3 random bytes), one file and one corruption at a time, on a copy of `base`.

    Returns {(file, corruption): outcome of load_outcome}.
    """
    outcomes = {}
    files = sorted(p.relative_to(base) for p in (base / "1").rglob("*") if p.is_file())
    assert len(files) >= 10 and any("ocdbt.process_0" in str(f) for f in files)
    for n, (name, how) in enumerate((f, c) for f in files for c in corruptions):
        copy = tmp_path / f"c{n}"
        shutil.copytree(base, copy)
        path = copy / name
        data = bytearray(path.read_bytes())
        if how == "delete":
            path.unlink()
        elif how == "truncate":
            path.write_bytes(data[: int(rng.integers(max(len(data), 1)))])
        elif data:
            for i in rng.integers(len(data), size=int(rng.integers(1, 4))):
                data[i] ^= int(rng.integers(1, 256))
            path.write_bytes(bytes(data))
        outcomes[str(name), how] = load_outcome(copy, heads, metadata)
        shutil.rmtree(copy)
    return outcomes


@pytest.mark.parametrize(
    "corruptions",
    [("delete", "flip0"),
     pytest.param(("delete", "truncate", *(f"flip{i}" for i in range(8))),
                  marks=pytest.mark.slow, id="many")],
)  # fmt: skip
def test_each_file_of_a_step_deleted_truncated_or_flipped(tmp_path, corruptions):
    """No corruption of the latest step loads silently: it loads as saved or names its folder.

    D=3000 puts the first layer's kernel out of line, in the largest file of
    `params/ocdbt.process_0/d/`, data that orbax does not checksum: there the params checksum
    in the head JSON is what catches a flip.
    """
    base = tmp_path / "base"
    heads, metadata = two_steps(base, dim=3000)
    rng = np.random.default_rng(len(corruptions))
    outcomes = corrupt_each_file(base, tmp_path, heads, metadata, rng, corruptions)
    errors = {key for key, outcome in outcomes.items() if outcome == "error"}
    kernel = max((base / "1").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    assert kernel.stat().st_size > 3000 * 16 * 2 and "ocdbt.process_0" in str(kernel)  # zstd
    # The head JSON and the params' index, metadata and data are never ignored.
    for name in ("head/metadata", "params/_METADATA", "params/manifest.ocdbt", kernel):
        name = str(Path(name).relative_to(base)) if Path(name).is_absolute() else f"1/{name}"
        assert {(name, how) for how in corruptions if how != "truncate"} <= errors, name
    print(f"\n{sorted(set(outcomes.values()))}: {len(errors)} errors of {len(outcomes)}")


def test_other_orbax_checkpoints_are_refused_and_left_alone(tmp_path):
    import orbax.checkpoint as ocp

    from helpers.checkpoints import assert_same_params, seeded_params
    from milpf_jax.learning.checkpoint import load_head, read_metadata, save_head
    from milpf_jax.learning.head import HeadConfig
    from milpf_jax.learning.inference import Head

    cfg = HeadConfig(dim=16)
    head = Head(seeded_params(cfg, 0), cfg)
    tree = {"w": np.arange(3, dtype=np.float32)}
    bare = tmp_path / "bare"  # one orbax checkpoint written straight into the folder
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(bare, tree)
    checkpointer.wait_until_finished()
    checkpointer.close()
    single = tmp_path / "single"  # a manager whose steps hold one unnamed item
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    with ocp.CheckpointManager(single, options=options) as mngr:
        mngr.save(3, args=ocp.args.StandardSave(tree))
    ours = tmp_path / "ours"
    save_head(ours, head)
    save_head(ours, head)
    cases = {
        bare: r"bare is not a MIL-PF head checkpoint directory: it is itself one orbax checkpoint",
        single: r"single/3 is not a MIL-PF head checkpoint: it has no 'head' item",
        single / "3" / "default": r"default is not a MIL-PF head checkpoint directory",
        ours / "1" / "params": r"ours/1/params is the 'params' item of the head checkpoint step",
        ours / "1" / "head": r"ours/1/head is the 'head' item",
    }
    for path, message in cases.items():
        before = sorted(p.relative_to(path) for p in path.rglob("*"))
        for call in (load_head, read_metadata, lambda p: save_head(p, head)):
            with pytest.raises(ValueError, match=message):
                call(path)
        assert sorted(p.relative_to(path) for p in path.rglob("*")) == before, path
    # Another program's step saved among ours: the latest step is refused, the older one named.
    handlers = {"state": ocp.StandardCheckpointHandler()}
    with ocp.CheckpointManager(ours, options=options, item_handlers=handlers) as mngr:
        mngr.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(tree)))
    with pytest.raises(ValueError, match=r"ours/7 is not a MIL-PF head checkpoint.*step=1"):
        load_head(ours)
    assert_same_params(load_head(ours, step=1).params, head.params)


@pytest.mark.slow
def test_ten_sigkills_during_saves_leave_the_last_good_checkpoint(tmp_path):
    """A saver of large heads (D=100000, 12.8 MB) in a loop, SIGKILLed ten times at a random
    moment of a save: a delay, drawn over the measured length of one save, after orbax's tmp
    folder of the next save appears. Landed mid-save: a tmp folder is left, or the kill came after
    the rename (the newest step is one the saver had not reported yet), or while an old step was
    deleted (more than two steps). After each kill the newest two steps load exactly as saved (a
    third, older one being deleted may be broken, and then says so), the newest is no older than
    the last save reported done, and the next saver goes on in that directory.
    """
    import inspect

    from helpers.checkpoints import (
        SAVER,
        TMP_MARK,
        assert_same_params,
        seeded_params,
        wait_for_unfinished_save,
    )
    from milpf_jax.learning.checkpoint import MAX_TO_KEEP, load_head, read_metadata, save_head
    from milpf_jax.learning.head import HeadConfig
    from milpf_jax.learning.inference import Head

    dim, directory = 100_000, tmp_path / "ckpt"
    cfg = HeadConfig(dim=dim)
    code = SAVER.format(helper=inspect.getsource(seeded_params))

    def saver(folder, seed):
        return subprocess.Popen(
            [sys.executable, "-c", code, str(folder), str(dim), str(seed)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip

    # How long a save lasts from its tmp folder's appearance to save_head's return.
    proc, windows = saver(tmp_path / "timing", 0), []
    assert proc.stdout.readline().strip()
    for _ in range(3):
        wait_for_unfinished_save(tmp_path / "timing")
        t0 = time.monotonic()
        assert proc.stdout.readline().strip()
        windows.append(time.monotonic() - t0)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    save_s = 0.9 * float(np.median(windows))  # the tail of a slower save lands, too
    rng = np.random.default_rng(1)
    next_seed, kills = 0, []
    for k in range(10):
        proc = saver(directory, next_seed)
        delay = rng.uniform(k, k + 1) / 10 * save_s  # stratified over one save
        try:
            first = proc.stdout.readline()  # one full save done; the next one follows
            assert first.strip(), f"the saver exited early with code {proc.wait()}"
            wait_for_unfinished_save(directory)
            time.sleep(delay)
        finally:
            proc.kill()
            proc.wait()
        done = [int(line) for line in [first, *proc.stdout.read().split()] if line.strip()]
        proc.stdout.close()
        entries = [p.name for p in directory.iterdir()]
        steps = sorted(int(name) for name in entries if name.isdigit())
        seed = read_metadata(directory)["seed"]
        where = ("writing" if any(TMP_MARK in name for name in entries)
                 else "deleting the old step" if len(steps) > MAX_TO_KEEP
                 else "after the rename" if seed > done[-1] else "between saves")  # fmt: skip
        kills.append({"kill": k, "delay_s": round(delay, 3), "where": where,
                      "landed": where != "between saves", "saves_done": len(done)})  # fmt: skip
        assert done[-1] <= seed <= done[-1] + 1, report(kills)
        assert_same_params(load_head(directory).params, seeded_params(cfg, seed))
        for step in steps[:-1]:
            try:
                old = read_metadata(directory, step=step)["seed"]
                assert_same_params(load_head(directory, step=step).params, seeded_params(cfg, old))
            except (ValueError, FileNotFoundError) as err:
                # Only a step that was being deleted may be broken, and then it says so.
                assert step < steps[-MAX_TO_KEEP] and str(directory / str(step)) in str(err), (
                    f"{err}\n{report(kills)}"
                )
                kills[-1]["broken_old_step"] = step
        next_seed = done[-1] + 2  # fresh seeds, so a mix-up between steps would show
    print(f"\nsaves took {np.round(windows, 3)} s\n{report(kills)}")
    assert sum(kill["landed"] for kill in kills) >= 8, report(kills)
    # A last save in this process clears the leftovers and keeps two steps.
    save_head(directory, Head(seeded_params(cfg, next_seed), cfg), {"seed": next_seed})
    assert not any(TMP_MARK in p.name for p in directory.iterdir())
    assert read_metadata(directory)["seed"] == next_seed
