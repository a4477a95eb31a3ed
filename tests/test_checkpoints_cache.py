"""Model files (save, safe read, weight loading) and the trained-model cache, including two
processes asking for the same model at once."""

from __future__ import annotations

import copy
import functools
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.checkpoints import FORMAT, load_weights, read_checkpoint, save_model, state_dict_of
from distill.errors import DistillError
from distill.model_cache import cache_key, cached_model
from distill.nets import MLP


def make_net(seed: int, hidden: tuple[int, ...] = (5,)) -> MLP:
    torch.manual_seed(seed)
    return MLP(input_shape=(4,), num_classes=3, hidden=hidden)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def assert_different_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)


# -- save / read / load ------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    net = make_net(0)
    path = tmp_path / "sub" / "dir" / "model.ckpt"  # parents are created
    size = save_model(path, net, net_config={"hidden": [5], "name": "mlp"}, num_classes=3)
    assert size == path.stat().st_size > 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.ckpt"]  # no temporary file left
    checkpoint = read_checkpoint(path)
    assert checkpoint["format"] == FORMAT
    assert checkpoint["net_config"] == {"hidden": [5], "name": "mlp"}
    assert checkpoint["num_classes"] == 3
    other = make_net(1)
    assert_different_weights(net, other)
    assert load_weights(other, path, "student") is other
    assert_same_weights(net, other)
    x = torch.randn(2, 4)
    torch.testing.assert_close(other(x), net(x))


def test_save_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    save_model(path, make_net(0))
    second = make_net(1)
    save_model(path, second)
    assert_same_weights(load_weights(make_net(2), path, "x"), second)
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def test_save_failure_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises for a lambda
        save_model(path, make_net(0), bad=lambda: None)
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(DistillError, match=r"checkpoint not found: .*nothing\.ckpt"):
        read_checkpoint(tmp_path / "nothing.ckpt")
    with pytest.raises(DistillError, match="checkpoint not found"):
        load_weights(make_net(0), tmp_path / "nothing.ckpt", "teacher 'a'")
    with pytest.raises(DistillError, match="checkpoint not found"):
        read_checkpoint(tmp_path)  # a directory is not a checkpoint


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"PK\x03\x04 truncated zip",
        bytes(range(256)),
        b'{"state_dict": {}}',
        b"x",
        # plain text makes torch's weights-only unpickler fail with IndexError or KeyError
        b"this is not a checkpoint at all\n" * 4,
        b"a,b,label\n1,2,0\n",
        b"hello",
    ],
    ids=["empty", "broken-zip", "binary", "json", "one-byte", "text", "csv", "hello"],
)
def test_garbage_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(content)
    with pytest.raises(DistillError, match=r"cannot read checkpoint .*garbage\.ckpt"):
        read_checkpoint(path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    save_model(path, make_net(0))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DistillError, match="cannot read checkpoint"):
        load_weights(make_net(0), path, "student")


class Opaque:
    """An arbitrary Python object: loading it needs unpickling code, so it must be refused."""

    def __init__(self, value: int) -> None:
        self.value = value


TRAP_MARKER = "unpickled-code-ran"


def spring_trap(path: str) -> str:
    Path(path).write_text("ran")
    return path


class Trap:
    """Pickles as a call to `spring_trap`: a file appears if loading runs pickled code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return spring_trap, (self.path,)


def test_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save({"format": FORMAT, "state_dict": make_net(0).state_dict(), "extra": Opaque(3)}, path)
    assert isinstance(torch.load(path, weights_only=False)["extra"], Opaque)  # it is a real pickled object
    with pytest.raises(DistillError, match=r"cannot read checkpoint .*model\.ckpt"):
        read_checkpoint(path)
    with pytest.raises(DistillError, match="cannot read checkpoint"):
        load_weights(make_net(0), path, "student")


def test_pickled_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / TRAP_MARKER
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": make_net(0).state_dict(), "trap": Trap(marker)}, path)
    with pytest.raises(DistillError, match="cannot read checkpoint"):
        read_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what an unsafe load would have done
    assert marker.exists()


@pytest.mark.parametrize(
    "other_hidden,detail",
    [
        ((6,), r"size mismatch for features\.1\.weight"),
        ((5, 5), r"Unexpected key\(s\) in state_dict: \"features\.3\.weight\""),
    ],
)
def test_wrong_architecture_names_the_mismatch(tmp_path: Path, other_hidden: tuple[int, ...], detail: str) -> None:
    path_small, path_large = tmp_path / "small.ckpt", tmp_path / "large.ckpt"
    save_model(path_small, make_net(0))
    save_model(path_large, make_net(0, other_hidden))
    with pytest.raises(DistillError) as err:
        load_weights(make_net(1), path_large, "teacher 'big'")
    message = str(err.value)
    assert message.startswith(f"teacher 'big': checkpoint {path_large} does not fit the configured network: ")
    assert re.search(detail, message), message
    assert "\n" not in message
    with pytest.raises(DistillError, match="student: checkpoint .* does not fit the configured network"):
        load_weights(make_net(1, other_hidden), path_small, "student")


def test_wrong_architecture_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    save_model(path, make_net(0, (5,)))
    with pytest.raises(DistillError, match=r"Missing key\(s\) in state_dict: \"features\.3\.weight\""):
        load_weights(make_net(0, (5, 5)), path, "student")


@pytest.mark.parametrize("prefix", ["net.", "student.", "model."])
def test_lightning_prefixes_are_stripped(tmp_path: Path, prefix: str) -> None:
    net = make_net(0)
    state = {prefix + k: v for k, v in net.state_dict().items()}
    state["terms.kd.connector.weight"] = torch.zeros(2, 2)  # loss-term parameters travel alongside
    path = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "state_dict": state}, path)
    other = make_net(1)
    load_weights(other, path, "student")
    assert_same_weights(net, other)


def test_state_dict_of_variants() -> None:
    w = torch.ones(1)
    assert state_dict_of({"state_dict": {"net.a": w, "net.b": w}}).keys() == {"a", "b"}
    assert state_dict_of({"state_dict": {"student.a": w, "terms.x": w}}).keys() == {"a"}
    assert state_dict_of({"a": w, "b.c": w}).keys() == {"a", "b.c"}  # a bare state_dict
    assert state_dict_of({"state_dict": {"net.a": w, "b": w}}).keys() == {"net.a", "b"}  # mixed: unchanged
    assert state_dict_of({"state_dict": {}}) == {}
    assert state_dict_of({"state_dict": {"x.a": w}}, prefixes=("x.",)).keys() == {"a"}
    with pytest.raises(DistillError, match="no state_dict"):
        state_dict_of({"state_dict": [1, 2]})


class Wrapped(nn.Module):
    """A network whose parameters all live under one child called `model` (a common wrapper)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.model = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def test_round_trip_of_network_with_single_child_named_model(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.ckpt"
    net = Wrapped(0)
    save_model(path, net)
    other = Wrapped(1)
    load_weights(other, path, "student")
    assert_same_weights(net, other)


# -- the model cache ---------------------------------------------------------------------------


def test_cache_key_is_stable_and_order_independent() -> None:
    key = cache_key({"a": 1, "b": [1, 2], "c": {"d": "e"}})
    assert key == cache_key({"c": {"d": "e"}, "b": [1, 2], "a": 1})
    assert len(key) == 16 and int(key, 16) >= 0
    assert key != cache_key({"a": 2, "b": [1, 2], "c": {"d": "e"}})
    assert key != cache_key({"a": 1, "b": [2, 1], "c": {"d": "e"}})
    assert cache_key({"p": Path("/x")}) == cache_key({"p": "/x"})  # non-JSON values by their str


class Trainer:
    """A train function that records its calls and moves the weights somewhere recognisable."""

    def __init__(self, seed: int) -> None:
        self.calls = 0
        self.seed = seed

    def __call__(self, model: nn.Module) -> None:
        self.calls += 1
        torch.manual_seed(self.seed)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()


def test_cached_model_trains_once_then_reuses(tmp_path: Path) -> None:
    payload = {"net": "mlp", "hidden": [5], "epochs": 3}
    first_model, first_train = make_net(0), Trainer(seed=10)
    path, reused = cached_model(tmp_path / "cache", "teacher-a", payload, first_model, first_train)
    assert (reused, first_train.calls) == (False, 1)
    assert path == tmp_path / "cache" / f"teacher-a-{cache_key(payload)}.pt"
    assert path.is_file()
    assert read_checkpoint(path)["payload"] == payload
    assert (tmp_path / "cache" / f"teacher-a-{cache_key(payload)}.json").is_file()
    trained = {k: v.clone() for k, v in first_model.state_dict().items()}

    second_model, second_train = make_net(1), Trainer(seed=20)
    assert_different_weights(first_model, second_model)
    path2, reused2 = cached_model(
        tmp_path / "cache", "teacher-a", dict(reversed(payload.items())), second_model, second_train
    )
    assert (path2, reused2, second_train.calls) == (path, True, 0)
    assert_same_weights(first_model, second_model)
    for k, v in second_model.state_dict().items():
        assert torch.equal(v, trained[k])


def test_cached_model_different_payload_or_label_trains_again(tmp_path: Path) -> None:
    payload = {"net": "mlp", "epochs": 3}
    path, _ = cached_model(tmp_path, "m", payload, make_net(0), Trainer(seed=1))

    other_train = Trainer(seed=2)
    other_model = make_net(0)
    other_path, reused = cached_model(tmp_path, "m", {**payload, "epochs": 4}, other_model, other_train)
    assert (reused, other_train.calls) == (False, 1)
    assert other_path != path and other_path.is_file()

    label_train = Trainer(seed=3)
    label_path, reused = cached_model(tmp_path, "other", payload, make_net(0), label_train)
    assert (reused, label_train.calls) == (False, 1)
    assert label_path not in (path, other_path)

    reloaded = make_net(5)
    cached_model(tmp_path, "m", payload, reloaded, Trainer(seed=9))
    reference = make_net(0)
    Trainer(seed=1)(reference)
    assert_same_weights(reloaded, reference)


def test_failed_training_caches_nothing_and_releases_the_lock(tmp_path: Path) -> None:
    def crash(model: nn.Module) -> None:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cached_model(tmp_path, "m", {"a": 1}, make_net(0), crash)
    assert not list(tmp_path.glob("*.pt"))
    train = Trainer(seed=1)
    _, reused = cached_model(tmp_path, "m", {"a": 1}, make_net(0), train)  # would hang if the lock were held
    assert (reused, train.calls) == (False, 1)


def test_a_cache_entry_that_no_longer_fits_the_network_is_moved_aside_and_retrained(tmp_path: Path) -> None:
    # Same key, other weights: the network's code changed since the entry was written.
    path, _ = cached_model(tmp_path, "m", {"a": 1}, make_net(0), Trainer(seed=1))
    net, train = make_net(0, (7,)), Trainer(seed=2)
    again, reused = cached_model(tmp_path, "m", {"a": 1}, net, train)
    assert (again, reused, train.calls) == (path, False, 1)
    assert [p.name.split("-")[0] for p in tmp_path.glob("m-*.pt.unreadable-*")] == ["m"]
    reference = make_net(0, (7,))
    Trainer(seed=2)(reference)
    assert_same_weights(net, reference)
    assert_same_weights(load_weights(make_net(3, (7,)), path, "m"), reference)


@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "text"])
def test_a_corrupt_cache_entry_is_moved_aside_and_the_model_retrained(tmp_path: Path, damage: str) -> None:
    path, _ = cached_model(tmp_path, "m", {"a": 1}, make_net(0), Trainer(seed=1))
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "zero bytes": b"", "text": b"not a model"}[damage])
    net, train = make_net(4), Trainer(seed=1)
    again, reused = cached_model(tmp_path, "m", {"a": 1}, net, train)
    assert (again, reused, train.calls) == (path, False, 1)  # recovered: trained again, cached again
    aside = list(tmp_path.glob("m-*.pt.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_bytes() != data  # the damaged file, kept for inspection
    reference = make_net(0)
    Trainer(seed=1)(reference)
    assert_same_weights(net, reference)
    third, reused = cached_model(tmp_path, "m", {"a": 1}, make_net(5), Trainer(seed=9))
    assert reused  # the next run reuses the new entry


def test_a_failed_load_leaves_the_initial_weights(tmp_path: Path) -> None:
    """A partly loaded entry must not leak into the network that is then trained from its initial weights."""
    path, _ = cached_model(tmp_path, "m", {"a": 1}, make_net(0, (5, 3)), Trainer(seed=1))
    state = torch.load(path, weights_only=True)
    del state["state_dict"]["head.bias"]  # every other tensor fits
    torch.save(state, path)
    net, initial = make_net(7, (5, 3)), make_net(7, (5, 3))
    seen = {}
    cached_model(tmp_path, "m", {"a": 1}, net, lambda m: seen.update(w=copy.deepcopy(m.state_dict())))
    for key, value in initial.state_dict().items():
        assert torch.equal(seen["w"][key], value), key


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    from distill.atomic import temporary_name

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    ours = temporary_name(tmp_path / "m-abc.pt")
    left = ours.with_name(ours.name.replace(f".{os.getpid()}.", f".{pid}."))
    left.write_bytes(b"")  # what a writer killed mid-write leaves
    old = tmp_path / ".teacher-x.pt.otherhost.123.ab12cd34.tmp"
    old.write_bytes(b"")
    os.utime(old, (time.time() - 2 * 86400,) * 2)  # another host's, two days old
    fresh = tmp_path / ".teacher-y.pt.otherhost.123.ab12cd34.tmp"
    fresh.write_bytes(b"")  # another host's, being written now
    mine = temporary_name(tmp_path / "m-def.pt")
    mine.write_bytes(b"")  # this process is alive
    cached_model(tmp_path, "m", {"a": 1}, make_net(0), Trainer(seed=1))
    assert not left.exists() and not old.exists()
    assert fresh.exists() and mine.exists()


def test_cache_files_get_the_umask_permissions_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path, _ = cached_model(tmp_path, "m", {"a": 1}, make_net(0), Trainer(seed=1))
        save_model(tmp_path / "student.ckpt", make_net(0))
    finally:
        os.umask(old)
    for f in (path, path.with_suffix(".json"), tmp_path / "student.ckpt"):
        assert f.stat().st_mode & 0o777 == 0o644, f  # readable by the team (group and others)
    os.umask(0o077)
    try:
        save_model(tmp_path / "private.ckpt", make_net(0))
    finally:
        os.umask(old)
    assert (tmp_path / "private.ckpt").stat().st_mode & 0o777 == 0o600  # the umask is respected, not widened


class ShortTrainer:
    """A stand-in for a Lightning Trainer after fit: `current_epoch` epochs done of `max_epochs`."""

    def __init__(self, done: int, wanted: int, max_steps: int = -1, global_step: int = 0) -> None:
        self.current_epoch, self.max_epochs, self.max_steps, self.global_step = done, wanted, max_steps, global_step
        self.interrupted = False


def test_a_training_stopped_before_the_recipe_end_is_not_cached(tmp_path: Path) -> None:
    from distill.model_cache import source_of, stopped_early

    assert stopped_early(ShortTrainer(2, 60)) == "stopped after 2 of 60 epochs"
    assert stopped_early(ShortTrainer(60, 60)) is None
    assert stopped_early(ShortTrainer(3, 60, max_steps=200, global_step=200)) is None  # a step budget is the recipe
    assert stopped_early(None) is None

    def short(model: nn.Module) -> ShortTrainer:
        Trainer(seed=1)(model)
        return ShortTrainer(2, 60)

    path, reused = cached_model(tmp_path, "m", {"a": 1}, make_net(0), short)
    assert not reused and not path.exists()
    assert source_of(path, reused) == "trained in this run, not cached: stopped after 2 of 60 epochs"
    train = Trainer(seed=1)
    path, reused = cached_model(tmp_path, "m", {"a": 1}, make_net(0), train)
    assert (reused, train.calls) == (False, 1) and path.exists()  # trained again, in full this time
    assert source_of(path, reused) == f"trained, cached as {path.name}"


# Helpers for the spawned processes: module level, so the children can import them.

PAYLOAD = {"net": "linear", "in": 3, "out": 2, "epochs": 1}


def slow_train(counter: str, model: nn.Module) -> None:
    """Counts itself in `counter`, takes about a second, and leaves process-specific weights."""
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(1.0)
    torch.manual_seed(os.getpid())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()


def cache_worker(cache_dir: str, counter: str, result: str, barrier) -> None:
    torch.manual_seed(os.getpid())
    model = nn.Linear(3, 2)
    barrier.wait(timeout=60)
    path, reused = cached_model(Path(cache_dir), "teacher", PAYLOAD, model, functools.partial(slow_train, counter))
    torch.save({"state_dict": model.state_dict(), "reused": reused, "path": str(path)}, result)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_processes_share_one_training(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    counter = tmp_path / "counter.txt"
    results = [tmp_path / f"result-{i}.pt" for i in range(2)]
    procs = [
        ctx.Process(target=cache_worker, args=(str(tmp_path / "cache"), str(counter), str(r), barrier)) for r in results
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]

    lines = counter.read_text().splitlines()
    assert len(lines) == 1, f"trained {len(lines)} times: {lines}"
    outcomes = [torch.load(r, weights_only=True) for r in results]
    assert sorted(o["reused"] for o in outcomes) == [False, True]
    assert outcomes[0]["path"] == outcomes[1]["path"]
    a, b = (o["state_dict"] for o in outcomes)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the weights are those the one training produced (seeded by its process id)
    shapes = [p.shape for p in nn.Linear(3, 2).parameters()]
    torch.manual_seed(int(lines[0]))
    expected = [torch.empty(shape).normal_() for shape in shapes]
    torch.testing.assert_close([a["weight"], a["bias"]], expected, rtol=0, atol=0)
