"""Data-parallel training with torch.distributed (gloo on CPU): identical masks on every rank."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import rows, run_grid

from sparsebench.store import Store

WORKER = textwrap.dedent("""
    import os, sys, warnings
    warnings.filterwarnings("ignore")
    import torch, torch.distributed as dist, torch.multiprocessing as mp

    def work(rank, world, port, out, store_path):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        from sparsebench.config import GridRequest, expand_grid
        from sparsebench.plugins import get_plugins
        from sparsebench.runner import Runner
        from sparsebench.scheduler import Scheduler
        from sparsebench.settings import RunSettings
        from sparsebench.store import Store
        plugins = get_plugins()
        cfg = expand_grid(GridRequest(methods=["stugan"], arch="sngan", sg=[0.8], sd=[0.5], steps=12,
                                      options={"stugan": {"delta_t": "3", "explore": "gd"}}), plugins)[0]
        if rank == 0:
            store = Store(store_path); dist.barrier()
        else:
            dist.barrier(); store = Store(store_path, readonly=True)
        cells = Scheduler(store, Runner(plugins, RunSettings(progress=False)))
        if rank == 0:
            cells.runner.resources.preflight([cfg], store)
        dist.barrier()
        cells.run_one(cfg)
        final = cells.runner.last_context.final
        torch.save({"g": final.g_masks.state_dict(), "d": final.d_masks.state_dict(),
                    "w": {n: p.detach().clone() for n, p in final.g_masks.params.items()}}, f"{out}/rank{rank}.pt")
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(work, args=(2, int(sys.argv[1]), sys.argv[2], sys.argv[3]), nprocs=2)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_keep_identical_masks_through_topology_updates(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    store = tmp_path / "r.db"
    subprocess.run([sys.executable, str(script), str(free_port()), str(tmp_path), str(store)], check=True, timeout=600)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for net in ("g", "d"):
        for name, mask in r0[net]["masks"].items():
            assert torch.equal(mask, r1[net]["masks"][name]), (net, name)
        explored = sum(int(a.sum()) for a in r0[net]["ever_active"].values())
        active = sum(int(m.sum()) for m in r0[net]["masks"].values())
        assert explored > active  # topology updates happened (explore=gd, dT=3 over 12 steps)
    for name, w in r0["w"].items():
        assert torch.equal(w, r1["w"][name])  # and the weights agree too: gradients were averaged
    got = rows(store)
    assert len(got) == 1 and got[0]["status"] == "done"  # only rank 0 wrote the store


@pytest.mark.slow
def test_torchrun_cli_only_rank0_writes(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    store = tmp_path / "r.db"
    proc = subprocess.run(
        [
            torchrun,
            "--nproc-per-node",
            "2",
            "--master-port",
            str(free_port()),
            "-m",
            "sparsebench",
            "run",
            "--methods",
            "static,dense",
            "--arch",
            "sngan",
            "--steps",
            "4",
            "--no-progress",
            "--store",
            str(store),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = rows(store)
    assert sorted(r["method"] for r in got) == ["dense", "static"] and all(r["status"] == "done" for r in got)
    # two processes draw their own batches: other runs than one process's, never skipped as them
    assert all(Store(store).get(r["run_id"])["config"]["world_size"] == 2 for r in got)
    one = run_grid(store, "static", steps=4, progress=True, check=False)
    assert "already done" not in one.stdout + one.stderr and len(Store(store).all_runs()) == 3


def test_the_process_group_waits_long_for_rank_0s_evaluations(monkeypatch):
    """Rank 0 alone runs preflight and every evaluation while the other ranks wait in a collective: NCCL's
    default timeout (10 minutes) would end the run; the group's is long, and set by an environment variable."""
    from datetime import timedelta

    import torch.distributed as dist

    from sparsebench import distributed

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *args, **kwargs: calls.append(kwargs))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("SPARSEBENCH_DIST_TIMEOUT_MIN", raising=False)
    assert distributed.init_from_env("cpu") == "cpu"
    assert calls[-1].get("timeout") == timedelta(hours=6)
    monkeypatch.setenv("SPARSEBENCH_DIST_TIMEOUT_MIN", "90")
    distributed.init_from_env("cpu")
    assert calls[-1].get("timeout") == timedelta(minutes=90)


def test_a_bad_process_group_timeout_is_one_line(tmp_path):
    env = {"WORLD_SIZE": "2", "SPARSEBENCH_DIST_TIMEOUT_MIN": "soon"}
    proc = run_grid(tmp_path / "r.db", "static", steps=2, check=False, env=env)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "SPARSEBENCH_DIST_TIMEOUT_MIN must be a positive number of minutes" in lines[0], lines


def test_a_process_count_that_does_not_divide_the_batch_is_refused(plugins, tmp_path, monkeypatch):
    """Rounding each rank's share down would shrink the global batch silently (50 on 4 ranks: 48)."""
    from sparsebench import SparsebenchError, distributed
    from sparsebench.config import GridRequest, expand_grid
    from sparsebench.train.context import RunContext, RunServices

    monkeypatch.setattr(distributed, "world_size", lambda: 3)  # as under torchrun --nproc-per-node 3
    (cfg,) = expand_grid(GridRequest(methods=["static"], arch="sngan", steps=2), plugins)
    assert cfg.world_size == 3 and (cfg.train.batch_size, cfg.train.g_batch_size) == (32, 64)
    data = plugins.datasets.get(cfg.dataset).load(cfg.train.resolution)
    ctx = RunContext(cfg, data, torch.device("cpu"), tmp_path, RunServices(arch=plugins.archs.get("sngan")))
    G, D = ctx.build_models()
    with pytest.raises(SparsebenchError) as caught:
        ctx.train(ctx.state(G, D, None, None))
    message = str(caught.value)
    assert "3 processes cannot share the batch size 32 and the G batch size 64" in message and "\n" not in message
    assert not list(tmp_path.glob("checkpoint*"))  # refused before anything trained
    share = distributed.batch_share(cfg.train, 2)
    assert (share.batch_size, share.g_batch_size) == (16, 32)


def test_g_batchnorm_stays_per_rank_and_the_docs_say_so(plugins):
    """G's BatchNorm normalises over each rank's share (as BigGAN-PyTorch's multi-GPU default): torch's
    SyncBatchNorm conversion would replace the architectures' own BatchNorm, and with it BigGAN's sampling
    with batch statistics in eval mode; the module docstring and the GPU docs say so."""
    import copy

    from torch import nn

    from sparsebench import distributed
    from sparsebench_builtins.archs.layers import BatchNorm

    arch = plugins.archs.get("biggan")
    G, _ = arch.build(arch.presets["quick"], 10, 0.5)
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is BatchNorm for m in norms)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(G))
    assert not any(isinstance(m, BatchNorm) for m in converted.modules())  # why G is not converted
    gpu_docs = (Path(__file__).resolve().parents[1] / "docs" / "gpu.md").read_text()
    for text in (distributed.__doc__, gpu_docs):
        assert "SyncBatchNorm" in text and "each rank's share" in text


# -- decisions every rank takes together (gloo, 2 processes) ---------------------------------------------------
# Each scenario forces a rank-local difference that, acted on by one rank alone, leaves the other rank waiting in
# a collective it never matches. The process group's timeout is short here, so such a hang fails the test.

AGREEMENT_WORKER = textwrap.dedent("""
    import datetime, json, os, shutil, sys, warnings
    warnings.filterwarnings("ignore")
    import torch, torch.distributed as dist, torch.multiprocessing as mp

    def work(rank, world, port, out, scenario):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
        from sparsebench import SparsebenchError, balance
        from sparsebench.config import GridRequest, expand_grid
        from sparsebench.plugins import get_plugins
        from sparsebench.recorder import ClaimLost, RunRecorder
        from sparsebench.runner import Runner
        from sparsebench.scheduler import Scheduler
        from sparsebench.settings import RunSettings
        from sparsebench.store import Store
        from sparsebench.train import checkpoint, loop
        plugins = get_plugins()
        method, options = "stugan", {"stugan": {"delta_t": "3"}}
        if scenario == "adapt":
            method = "adapt"
            options = {"adapt": {"delta_t": "4", "delta_t_d": "2", "ratio_every": "1", "window": "2"}}
        cfg = expand_grid(GridRequest(methods=[method], arch="sngan", sg=[0.5], sd=[0.5], steps=8, metrics=(),
                                      options=options), plugins)[0]
        store_path = f"{out}/r.db"
        if rank == 0:
            store = Store(store_path); dist.barrier()
        else:
            dist.barrier(); store = Store(store_path, readonly=True)
        settings = RunSettings(progress=False, checkpoint_every=2)
        cells = Scheduler(store, Runner(plugins, settings))
        steps = [0]
        progress = RunRecorder.progress

        def counting(self, n=1):
            steps[0] += n
            progress(self, n)
            if scenario == "stop" and rank == 1 and steps[0] == 3:  # SIGTERM seen by rank 1 alone
                cells.runner.stop = True
        RunRecorder.progress = counting
        if scenario == "stop":  # each rank keeps a copy of its checkpoint of G step 2
            save = checkpoint.Checkpoint.save
            def saving(self, state, *args, **kwargs):
                save(self, state, *args, **kwargs)
                if state.step == 2:
                    shutil.copy(self.path, f"{self.path}.step2")
            checkpoint.Checkpoint.save = saving
        if scenario == "diverge":  # a loss non-finite on rank 1's share only
            observe = loop.DivergenceWatch.observe
            def poisoned(self, step, loss, what):
                observe(self, step, loss * float("nan") if rank == 1 and step == 3 else loss, what)
            loop.DivergenceWatch.observe = poisoned
        if scenario == "claim":  # rank 0, which alone checks the claim, finds it lost at G step 3
            asked = RunRecorder.stop_requested
            def losing(self):
                if rank == 0 and steps[0] == 3:
                    raise ClaimLost("run was taken over by another process")
                return asked(self)
            RunRecorder.stop_requested = losing
        decisions = []
        if scenario == "adapt":  # rank-local ratios: 0.5 on rank 0's share (keep D), 1 on rank 1's (grow D)
            from sparsebench_builtins.methods.adapt import BalancedTraining
            measured = balance._d_in_train_mode
            def forced(state, batch):
                d_post, d_real = measured(state, batch)
                pre = batch.d_gen.flatten()
                return (d_real.clone() if rank == 1 else pre + (d_real.mean() - pre.mean()) / 2), d_real
            balance._d_in_train_mode = forced
            adjust = BalancedTraining._adjust_d
            def recording(self, state, step, ratio):
                changed = adjust(self, state, step, ratio)
                decisions.append([step, ratio, self.d_density, changed])
                return changed
            BalancedTraining._adjust_d = recording
        result = {}
        try:
            outcome = cells.run_one(cfg)
            result.update(status=outcome.status, taken=outcome.taken, results={
                k: v for k, v in outcome.results.items() if k in ("diverged_step", "error")})
        except loop.Interrupted as exc:
            result.update(status="interrupted", step=exc.step)
        final = cells.runner.last_context.final
        if scenario == "adapt" and final is not None:
            result["decisions"] = decisions
            result["d_masks"] = {n: m.tolist() for n, m in final.d_masks.masks.items()}
        if scenario == "stop":  # resume from checkpoints of different steps: rank 1's of G step 2, rank 0's of 3
            (mine,) = [p for p in store.run_dir(cfg.run_id).glob("checkpoint-phase1*.pt")
                       if p.name.endswith("-rank1.pt") == (rank == 1)]
            result["saved_step"] = torch.load(mine, weights_only=True)["step"]
            if rank == 1:
                shutil.copy(f"{mine}.step2", mine)
            dist.barrier()
            cells.runner.stop, scenario = False, "resume"
            try:
                cells.run_one(cfg)
                result["resumed"] = "trained"
            except SparsebenchError as exc:
                result["resumed"] = str(exc)
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(result, f)
        dist.barrier()
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(work, args=(2, int(sys.argv[1]), sys.argv[2], sys.argv[3]), nprocs=2)
""")


def agreement(tmp_path, scenario: str) -> tuple[dict, dict]:
    import json

    script = tmp_path / "worker.py"
    script.write_text(AGREEMENT_WORKER)
    proc = subprocess.run(
        [sys.executable, str(script), str(free_port()), str(tmp_path), scenario],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tuple(json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))  # type: ignore[return-value]


@pytest.mark.slow
def test_a_stop_seen_by_one_rank_stops_both_at_the_same_step_and_uneven_checkpoints_are_refused(tmp_path):
    r0, r1 = agreement(tmp_path, "stop")
    assert r0["status"] == r1["status"] == "interrupted" and r0["step"] == r1["step"] == 3, (r0, r1)
    assert r0["saved_step"] == r1["saved_step"] == 3
    for r in (r0, r1):  # rank 1's checkpoint replaced by its one of G step 2: refused on both ranks, no hang
        assert "end at different G steps (2 to 3;" in r["resumed"], r["resumed"]


@pytest.mark.slow
def test_a_loss_non_finite_on_one_rank_stops_both_as_diverged(tmp_path):
    r0, r1 = agreement(tmp_path, "diverge")
    assert r0["status"] == r1["status"] == "diverged", (r0, r1)
    assert r0["results"]["diverged_step"] == r1["results"]["diverged_step"] == 3


@pytest.mark.slow
def test_a_claim_lost_on_rank_0_ends_the_run_on_both_ranks(tmp_path):
    r0, r1 = agreement(tmp_path, "claim")
    assert r0["taken"] and r1["taken"], (r0, r1)


@pytest.mark.slow
def test_adapt_takes_the_same_d_density_decisions_on_both_ranks(tmp_path):
    r0, r1 = agreement(tmp_path, "adapt")
    assert r0["status"] == r1["status"] == "done", (r0, r1)
    assert len(r0["decisions"]) == 3 and r0["decisions"] == r1["decisions"]  # G steps 2, 4, 6: one ratio
    assert r0["d_masks"] == r1["d_masks"]
