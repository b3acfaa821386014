"""The public surface: a plugin that imports only `sparsebench`, named random streams, code versions in
the run id, --rerun, resumed wall time, and the notebook path (`sparsebench.results`, `sparsebench.run`)."""

from __future__ import annotations

import ast
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import types
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import EXE, TINY, rows, run_cli

import sparsebench
from sparsebench.config import GridRequest, expand_grid
from sparsebench.plugins import Plugins
from sparsebench.train.context import RunContext

PLUGIN = '''
"""A third-party plugin that uses only the public surface."""

import os
import time

from sparsebench import Hooks, MaskState, Method, MethodContext, Option, Phase, hookimpl


class Pause(Hooks):
    """Sleeps TINY_PAUSE seconds after every G step: gives a run a known least wall time without
    changing its run id (a test device, not an option)."""

    def after_g_step(self, state, step):
        time.sleep(float(os.environ.get("TINY_PAUSE", "0")))
        return False


class TinyStatic(Method):
    name = "tiny-static"
    description = "fixed random masks on G and D"
    options = (Option("draws", int, 1, "named draws recorded in the results", interval="[0, 3]"),)

    def run(self, ctx: MethodContext) -> None:
        G, D = ctx.build_models()
        g_masks: MaskState | None = ctx.masks(G, ctx.config.sg, stream="g-masks")
        state = ctx.state(G, D, g_masks, ctx.masks(D, ctx.config.sd, stream="d-masks"))
        ctx.train(state, hooks=Pause())
        draws = {f"draw{i}": ctx.rng(f"draw{i}").initial_seed() % 1000 for i in range(ctx.options["draws"])}
        ctx.finish(state, **draws)

    def flop_phases(self, plan):
        return [Phase(plan.config.train.steps, None, None)]


class TwiceRequired(Method):
    name = "twice-required"
    description = "asks for the dense run twice, then trains a dense phase of its own"
    fixed = {"sg": 0.0, "sd": 0.0}
    requires = ("dense",)

    def run(self, ctx: MethodContext) -> None:
        ctx.require("dense")
        dense = ctx.require("dense")
        G, D = ctx.build_models()
        state = ctx.state(G, D, None, None)
        ctx.train(state)
        ctx.finish(state, pruned_from=dense.run_id)

    def flop_phases(self, plan):
        return [Phase(plan.config.train.steps, None, None)] * 2


@hookimpl
def register_methods(register):
    register(TinyStatic())
    register(TwiceRequired())
'''


def install_plugin(site: Path, version: str) -> dict:
    """The plugin as an installed distribution `tiny-plugin` of `version` on PYTHONPATH."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "tiny_plugin.py").write_text(PLUGIN)
    for old in site.glob("*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    dist = site / f"tiny_plugin-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tiny-plugin\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text("[sparsebench]\ntiny = tiny_plugin\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_plugin_source_imports_only_sparsebench():
    imported = set()
    for node in ast.walk(ast.parse(PLUGIN)):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert imported == {"sparsebench", "os", "time"}


def test_import_sparsebench_does_not_import_torch():
    code = "import sparsebench, sys; assert 'torch' not in sys.modules; print(sparsebench.__version__)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_every_public_name_resolves_and_unknown_names_do_not():
    for name in sparsebench.__all__:
        assert getattr(sparsebench, name) is not None, name
    from sparsebench.sparse import prune_and_regrow

    assert sparsebench.prune_and_regrow is prune_and_regrow
    with pytest.raises(AttributeError):
        sparsebench.not_a_public_name  # noqa: B018


def context(plugins, seed: int = 3) -> RunContext:
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", seeds=[seed], steps=2), plugins)[0]
    data = plugins.datasets.get(cfg.dataset).load(cfg.train.resolution)
    return RunContext(cfg, data, torch.device("cpu"), Path("."))


def test_run_context_is_a_method_context(plugins):
    ctx = context(plugins)
    assert isinstance(ctx, sparsebench.MethodContext)
    for wiring in ("build_fn", "require_fn", "log_fn", "extra_flops", "generator"):
        assert not hasattr(ctx, wiring), wiring


def test_named_random_streams_differ_and_are_stable_across_processes(plugins):
    ctx = context(plugins, seed=3)
    a, b = torch.rand(4, generator=ctx.rng("a")), torch.rand(4, generator=ctx.rng("b"))
    assert not torch.equal(a, b)
    assert torch.equal(a, torch.rand(4, generator=ctx.rng("a")))
    expected = int.from_bytes(hashlib.sha256(b"3:a").digest()[:8], "big") >> 1
    assert ctx.rng("a").initial_seed() == expected
    code = (
        "import torch; from sparsebench.config import stream_seed; "
        "print(torch.rand(4, generator=torch.Generator().manual_seed(stream_seed(3, 'a'))).tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert eval(out) == a.tolist()
    assert not torch.equal(a, torch.rand(4, generator=context(plugins, seed=4).rng("a")))


def test_declared_method_version_is_part_of_the_run_id():
    def plugin(version):
        class Versioned(sparsebench.Method):
            name = "versioned"

        Versioned.version = version
        mod = types.ModuleType(f"versioned{version}")
        mod.register_methods = sparsebench.hookimpl(lambda register: register(Versioned()))
        return Plugins(extra=[("versioned", mod)])

    one, two = (expand_grid(GridRequest(methods=["versioned"], arch="sngan"), plugin(v))[0] for v in ("1", "2"))
    assert dict(one.code)["method"] == "1" and dict(two.code)["method"] == "2"
    assert one.run_id != two.run_id
    assert one.replace(code=two.code).run_id == two.run_id


def test_third_party_plugin_runs_from_the_public_surface_and_its_version_keys_the_run(tmp_path, store):
    env = install_plugin(tmp_path / "site", "0.3")
    cmd = ["run", "--methods", "tiny-static,twice-required", "--arch", "sngan", "--store", str(store), *TINY]
    run_cli(*cmd, env=env, check=True)
    by = {r["method"]: r for r in rows(store, env)}
    assert {m: by[m]["status"] for m in by} == {"tiny-static": "done", "twice-required": "done", "dense": "done"}
    assert "method=0.3" in by["tiny-static"]["code"] and "arch=" in by["tiny-static"]["code"]
    assert float(by["tiny-static"]["density_g"]) == pytest.approx(0.1, abs=0.01)
    # the dependency's FLOPs are counted once however often it is required, plus the own dense phase
    assert float(by["twice-required"]["train_flops"]) == pytest.approx(2 * float(by["dense"]["train_flops"]))
    # the notebook path reads the same table
    df = sparsebench.results(store)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == list(rows(store, env)[0])
    assert set(df["run_id"]) == {r["run_id"] for r in by.values()}
    # a fixed plugin (new version) trains anew instead of returning the stale result
    env = install_plugin(tmp_path / "site", "0.4")
    run_cli(*cmd, env=env, check=True)
    after = rows(store, env)
    assert [r["run_id"] for r in after if r["method"] == "dense"] == [by["dense"]["run_id"]]  # the same code: reused
    static = [r for r in after if r["method"] == "tiny-static"]
    assert sorted(r["code"].split(",")[1] for r in static) == ["method=0.3", "method=0.4"]
    assert all(r["status"] == "done" for r in static) and static[0]["run_id"] != static[1]["run_id"]


def query(store: Path, sql: str) -> list:
    with closing(sqlite3.connect(store)) as conn:
        return conn.execute(sql).fetchall()


def stored(store: Path, run_id: str) -> tuple:
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT status, results, updated_at FROM runs WHERE run_id = ?", (run_id,)).fetchone()


def test_rerun_trains_a_done_cell_again_and_replaces_its_row(store):
    cmd = ["run", "--methods", "static", "--arch", "sngan", "--store", str(store), *TINY]
    run_cli(*cmd, check=True)
    first = rows(store)[0]
    before = stored(store, first["run_id"])
    skipped = run_cli(*cmd, check=True)
    assert "already done" in skipped.stderr and stored(store, first["run_id"]) == before
    rerun = run_cli(*cmd, "--rerun", check=True)
    assert "already done" not in rerun.stderr
    after = rows(store)
    assert len(after) == 1 and after[0]["status"] == "done" and after[0]["run_id"] == first["run_id"]
    status, results, updated = stored(store, first["run_id"])
    assert status == "done" and updated > before[2] and results != before[1]  # a new wall_s at least
    assert after[0]["fid"] == first["fid"]  # the same code and seed train the same model


def tiny_static(store: Path, steps: int) -> list[str]:
    return [
        EXE,
        "run",
        "--methods",
        "tiny-static",
        "--arch",
        "sngan",
        "--steps",
        str(steps),
        "--checkpoint-every",
        "2",
        "--no-progress",
        "--store",
        str(store),
    ]


def stop_after_checkpoint(cmd: list[str], env: dict, store: Path, step: int) -> None:
    """Start `cmd` and SIGTERM it once its checkpoint has reached G step `step`."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore", **env}
    )
    reached = False
    while proc.poll() is None and not reached:
        time.sleep(0.05)
        for ckpt in (store.parent / f"{store.stem}-artifacts").glob("*/checkpoint-phase1.pt"):
            try:
                reached = torch.load(ckpt, weights_only=True)["step"] >= step
            except (RuntimeError, EOFError, OSError):  # being replaced
                pass
    assert reached, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130


@pytest.mark.slow
def test_interrupted_rerun_keeps_the_stored_result(tmp_path, store):
    env = install_plugin(tmp_path / "site", "0.1")
    cmd = tiny_static(store, 30)
    run_cli(*cmd[1:], env=env, check=True)
    run_id = rows(store, env)[0]["run_id"]
    with sqlite3.connect(store) as conn:  # mark the first run's env and curves, which a rerun would rewrite
        conn.execute("""UPDATE runs SET env = '{"first": "run"}'""")
        conn.execute("UPDATE stats SET value = value + 1000")
    curves = lambda: query(store, "SELECT * FROM stats ORDER BY step, key")  # noqa: E731
    env_of = lambda: query(store, "SELECT env FROM runs")[0][0]  # noqa: E731
    marked = curves()
    assert marked and env_of() == '{"first": "run"}'
    before = stored(store, run_id)
    stop_after_checkpoint([*cmd, "--rerun"], {**env, "TINY_PAUSE": "0.2"}, store, 4)
    assert stored(store, run_id) == before  # still done, with the first run's results, env and curves
    assert env_of() == '{"first": "run"}' and curves() == marked
    assert run_cli(*cmd[1:], env=env, check=True).stderr.count("already done") == 1  # and no claim left behind


@pytest.mark.slow
def test_resumed_run_wall_time_is_the_sum_of_its_segments(tmp_path, store):
    env = {**install_plugin(tmp_path / "site", "0.1"), "TINY_PAUSE": "0.2"}
    cmd = tiny_static(store, 30)
    stop_after_checkpoint(cmd, env, store, 20)
    first = rows(store, env)[0]
    assert first["status"] == "running"
    step = int(first["interrupted_step"])
    assert float(first["wall_s"]) >= 0.2 * step  # the first segment slept after each of its G steps
    run_cli(*cmd[1:], env=env, check=True)
    done = rows(store, env)[0]
    assert done["status"] == "done"
    # both segments: the first one's time and the remaining steps' sleeps
    assert float(done["wall_s"]) >= float(first["wall_s"]) + 0.2 * (30 - step)


def test_run_from_python_stores_a_done_row(store):
    df = sparsebench.run(methods="static", arch="sngan", sg=0.8, sd=[0.5], steps=2, store=store, options={"static": {}})
    assert isinstance(df, pd.DataFrame) and list(df["method"]) == ["static"]
    assert df.loc[0, "status"] == "done" and df.loc[0, "sg"] == 0.8 and df.loc[0, "steps"] == 2
    cli_rows = rows(store)
    assert [r["run_id"] for r in cli_rows] == list(df["run_id"]) and cli_rows[0]["status"] == "done"
    with pytest.raises(sparsebench.SparsebenchError, match="unknown option"):
        sparsebench.run(methods="static", arch="sngan", steps=2, store=store, options=["static.nope=1"])


def test_describe_takes_architecture_options_and_refuses_others():
    assert run_cli("describe", "--arch", "sngan", "--format", "json", check=True).stdout.startswith("{")
    unknown = run_cli("describe", "--arch", "sngan", "-o", "sngan.width=2")
    assert unknown.returncode == 2 and unknown.stderr.strip() == "Error: sngan: unknown option(s) width; allowed: none"
    other = run_cli("describe", "--arch", "sngan", "-o", "stugan.p0=0.3")
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert other.stderr.startswith("Error: --option for 'stugan': describe takes options of the architecture only")


def test_names_renamed_in_this_version_still_work_and_say_so():
    """A plugin written against the previous names runs unchanged: `sparsebench.Hooks` (now `Callbacks`, with a
    DeprecationWarning), the module `sparsebench.api`, and a DynamicSparseMethod naming its class in `hooks`."""
    import warnings

    import sparsebench as sb
    from sparsebench.api import Method as OldMethod

    assert OldMethod is sb.Method
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hooks = sb.Hooks
    assert hooks is sb.Callbacks and any(issubclass(w.category, DeprecationWarning) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec("from sparsebench import *", {})  # a star import takes the public names, not the deprecated ones
    assert "Hooks" not in sb.__all__ and not caught

    class Marked(sb.TopologyUpdate):
        pass

    class OldStyle(sb.DynamicSparseMethod):
        name = "old-style"
        hooks = Marked  # the attribute's name before `callbacks_class`

    options = {o.name: o.default for o in OldStyle.options}
    config = types.SimpleNamespace(train=types.SimpleNamespace(steps=10, explore_interval=5))
    assert isinstance(OldStyle().make_callbacks(options, config, torch.Generator()), Marked)
