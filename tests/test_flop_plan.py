"""The FLOP plan: `flops` and `describe` follow a method's `flop_phases` with the options given, methods declare
their extra work (dense weight gradients of regrowth steps, one-off dense passes), and trained runs count
the same work in their stored training FLOPs."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from conftest import rows, run_cli

from sparsebench.config import GridRequest, expand_grid

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--arch", "sngan", "--sg", "0.8", "--sd", "0.5", "--steps", "6"]


def results(store, env=None) -> dict:
    return {r["method"]: r for r in rows(store, env)}


def predicted(*args: str, env=None) -> dict:
    out = run_cli("flops", *GRID, "--preset", "quick", "--format", "csv", *args, env=env, check=True).stdout
    return {r["method"]: float(r["train_flops"]) for r in csv.DictReader(io.StringIO(out))}


@pytest.fixture(scope="module")
def snip_env(tmp_path_factory) -> dict:
    """The example SNIP plugin, found through its entry point (as after `pip install`)."""
    site = tmp_path_factory.mktemp("site")
    dist = site / "sparsebench_snip-0.2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sparsebench-snip\nVersion: 0.2.0\n")
    (dist / "entry_points.txt").write_text("[sparsebench]\nsnip = sparsebench_snip\n")
    paths = [str(site), str(ROOT / "examples" / "sparsebench-snip"), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def test_regrowth_steps_cost_their_dense_weight_gradients_in_trained_runs_and_in_flops(tmp_path):
    store = tmp_path / "r.db"
    # per-layer ranking keeps every layer's density (a global one moves density between layers)
    per_layer = ["-o", "set.ranking=layer", "-o", "rigl.ranking=layer"]
    run_cli("run", "--methods", "static,stugan,set,rigl", *GRID, "-o", "stugan.delta_t=2", "-o", "rigl.delta_t=2",
            "-o", "set.delta_t=2", *per_layer, "--no-progress", "--store", str(store), check=True)  # fmt: skip
    by = {m: float(r["train_flops"]) for m, r in results(store).items()}
    plan = predicted("--methods", "static,stugan,set,rigl", "-o", "stugan.delta_t=2", "-o", "rigl.delta_t=2",
                     "-o", "set.delta_t=2", *per_layer)  # fmt: skip
    for method in ("static", "stugan", "set", "rigl"):
        # prediction = what the run stored (up to the rounding of per-layer non-zero counts)
        assert plan[method] == pytest.approx(by[method], rel=1e-4), method
    assert by["set"] == pytest.approx(by["static"], rel=1e-12)  # random regrowth reads no gradient
    assert by["stugan"] > by["static"] and by["rigl"] > by["static"]  # gradient regrowth costs more
    # G steps 2 and 4 regrow by G's dense gradient (step 6 is the last: no update): G's weight gradients of
    # those two G steps cost their dense share on top, (1 - density) x G's scope forward FLOPs per image
    from sparsebench.describe import flop_plan
    from sparsebench.plugins import get_plugins

    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", sg=[0.8], sd=[0.5], steps=6), get_plugins())[0]
    (phase,), gan, _ = flop_plan(get_plugins(), cfg, {})
    extra = cfg.train.g_batch_size * (gan.g.total - gan.g.forward(phase.g_density))
    assert extra > 0
    for method in ("stugan", "rigl"):
        assert plan[method] - plan["static"] == pytest.approx(2 * extra, rel=1e-9)
        assert by[method] - by["static"] == pytest.approx(2 * extra, rel=1e-3)


def test_flops_follows_a_density_changing_option_as_the_trained_run(tmp_path, snip_env):
    store = tmp_path / "r.db"
    opt = ["-o", "snip.cut=uniform"]
    run_cli("run", "--methods", "snip", *GRID, *opt, "--no-progress", "--store", str(store), env=snip_env, check=True)
    row = results(store, snip_env)["snip"]
    assert float(row["density_g"]) == pytest.approx(0.2, abs=1e-3)
    plan = predicted("--methods", "snip,static", *opt, env=snip_env)
    assert plan["snip"] == pytest.approx(float(row["train_flops"]), rel=1e-4)
    # the global cut's per-layer densities follow the data: counted as uniform, as the docs say
    assert predicted("--methods", "snip", env=snip_env)["snip"] == pytest.approx(plan["snip"], rel=1e-9)


def test_a_declared_dense_pass_is_counted(tmp_path, snip_env):
    store = tmp_path / "r.db"
    opt = ["-o", "snip.cut=uniform"]
    run_cli("run", "--methods", "snip", *GRID, *opt, "--no-progress", "--store", str(store), env=snip_env, check=True)
    out = run_cli("describe", "--arch", "sngan", "--sg", "0.8", "--sd", "0.5", "--steps", "6", "--method", "snip",
                  *opt, "--format", "json", env=snip_env, check=True).stdout  # fmt: skip
    plan = json.loads(out)["plan"]
    assert plan[0]["dense_pass"] and plan[0]["label"] == "snip saliency"
    assert plan[0]["g_images"] > 0 and plan[0]["d_images"] == 3 * plan[0]["g_images"]
    # the stored FLOPs are the sparse steps plus the pass: the same grid as `static` at uniform densities
    from sparsebench.describe import cost_table, flop_plan
    from sparsebench.plugins import get_plugins

    plugins = get_plugins()
    cfg = expand_grid(
        GridRequest(methods=["static"], arch="sngan", sg=[0.8], sd=[0.5], steps=6, distribution="uniform"), plugins
    )[0]
    (static,) = cost_table(plugins, [cfg])
    _, gan, _ = flop_plan(plugins, cfg, {})
    dense_pass = 3.0 * (plan[0]["g_images"] * gan.g.total + plan[0]["d_images"] * gan.d.total)
    stored = float(results(store, snip_env)["snip"]["train_flops"])
    assert stored == pytest.approx(static["train_flops"] + dense_pass, rel=1e-4)
    paper = run_cli("flops", *GRID, "--preset", "quick", "--methods", "snip", *opt, "--convention", "paper",
                    "--format", "csv", env=snip_env, check=True).stdout  # fmt: skip
    paper_flops = float(next(csv.DictReader(io.StringIO(paper)))["train_flops"])
    assert paper_flops == pytest.approx(2.0 * static["train_flops"], rel=1e-4)  # the paper's count leaves it out


def test_describe_takes_a_method_and_its_density_changing_options():
    base = ["describe", "--arch", "sngan", "--sg", "0.8", "--method", "gan-tickets", "--format", "json"]
    two = json.loads(run_cli(*base, "-o", "gan-tickets.rounds=2", check=True).stdout)
    five = json.loads(run_cli(*base, "-o", "gan-tickets.rounds=5", check=True).stdout)
    assert [la["density"] for la in two["g_layers"]] == pytest.approx([0.8**2] * len(two["g_layers"]))
    assert [la["density"] for la in five["g_layers"]] == pytest.approx([0.8**5] * len(five["g_layers"]))
    assert all(la["density"] == 1.0 for la in five["d_layers"])  # D stays dense
    assert [p["label"] for p in five["plan"]] == ["pretrain", "round1", "round2", "round3", "round4", "round5"]
    stugan = json.loads(
        run_cli(
            "describe",
            "--arch",
            "sngan",
            "--method",
            "stugan",
            "--steps",
            "100",
            "-o",
            "stugan.delta_t=10",
            "--format",
            "json",
            check=True,
        ).stdout  # fmt: skip
    )
    assert stugan["plan"][0]["g_dense_grad_steps"] == 9  # steps 10, 20, ..., 90 (none at the last step)
    bad = run_cli("describe", "--arch", "sngan", "-o", "stugan.delta_t=10")
    assert bad.returncode == 2 and "--option for 'stugan'" in bad.stderr


def test_flops_marks_a_plan_whose_densities_follow_the_data_as_an_estimate(snip_env):
    """SNIP's global cut follows the saliency of the data (its prediction is uniform densities): its row is an
    estimate, in the CSV's `estimate` column and with `~` and a note in text; the uniform cut's is exact."""

    def table(*args: str) -> dict:
        out = run_cli("flops", *GRID, "--preset", "quick", "--format", "csv", "--methods", "snip,static", *args,
                      env=snip_env, check=True).stdout  # fmt: skip
        return {r["method"]: r["estimate"] for r in csv.DictReader(io.StringIO(out))}

    assert table() == {"snip": "True", "static": "False"}  # static: ERK masks, the layout it trains at
    assert table("-o", "snip.cut=uniform") == {"snip": "False", "static": "False"}
    from sparsebench.describe import ESTIMATE_NOTE

    text = run_cli("flops", *GRID, "--preset", "quick", "--methods", "snip,static", env=snip_env, check=True).stdout
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()[0] in ("snip", "static")}
    assert rows["snip"].count("~") == 4 and "~" not in rows["static"]
    assert ESTIMATE_NOTE in text
    uniform = run_cli("flops", *GRID, "--preset", "quick", "--methods", "snip", "-o", "snip.cut=uniform",
                      env=snip_env, check=True).stdout  # fmt: skip
    assert "~" not in uniform
    described = run_cli("describe", *GRID, "--method", "snip", env=snip_env, check=True).stdout
    assert "~density (snip)" in described and "~train: 6 G steps" in described and ESTIMATE_NOTE in described


def test_the_builtins_mark_the_plans_that_depend_on_data_or_trained_weights(plugins):
    from sparsebench.describe import cost_table

    def estimates(methods: list[str], **request) -> dict[str, bool]:
        configs = expand_grid(GridRequest(methods=methods, arch="sngan", sg=[0.8], sd=[0.5], steps=6, **request),
                              plugins)  # fmt: skip
        return {c.method: row["estimate"] for c, row in zip(configs, cost_table(plugins, configs))}

    every = ["dense", "static", "stugan", "pf-uniform", "pf-global", "gan-tickets", "rigl", "set", "adapt"]
    assert estimates(every) == {
        "dense": False,
        "static": False,  # ERK masks: the layout it trains at
        "stugan": False,  # per-layer exploration keeps every layer's density
        "pf-uniform": False,
        "pf-global": True,  # one global |w| threshold on the trained G
        "gan-tickets": True,  # a global |w| cut each round
        "rigl": True,  # a global ranking moves density between layers
        "set": True,
        "adapt": True,  # and D's density follows the balance ratio
    }
    assert estimates(["static"], distribution="uniform") == {"static": False}
    assert estimates(["static"], distribution="global") == {"static": True}  # masks by |w| at init
    layer = {"rigl": {"ranking": "layer"}, "set": {"ranking": "layer"}}
    assert estimates(["rigl", "set"], options=layer) == {"rigl": False, "set": False}
