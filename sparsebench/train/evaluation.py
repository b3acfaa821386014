"""Evaluating a trained run: what `sparsebench results` stores beside a run's config.

Densities are measured on the weights, FLOPs follow the phases the run trained, time is measured
(mean G step, sampling per image with the run's sparse-layer backend), and the metric plugins
score the evaluated generator's samples against the data's train split.
"""

from __future__ import annotations

import os
import statistics
from typing import TYPE_CHECKING, Any

import torch

from sparsebench.config import RunConfig, stream_seed
from sparsebench.files import atomic_save
from sparsebench.metrics.evaluate import SAMPLE_BATCH, Evaluator, SampleSet, sample
from sparsebench.plugins import Plugins
from sparsebench.sparse.scope import scope_parameters
from sparsebench.timing import Stopwatch

if TYPE_CHECKING:  # pragma: no cover
    from sparsebench.train.context import RunContext


def evaluate_run(config: RunConfig, ctx: RunContext, ev: Evaluator, plugins: Plugins, device: torch.device) -> dict:
    """The results of a trained run: densities measured on the weights, FLOPs (absolute and relative to
    the dense GAN), measured time, and every metric of the evaluated generator's samples."""
    st = ctx.final
    assert st is not None, "evaluate_run needs a finished run (ctx.finish)"
    spec = config.train
    res: dict[str, Any] = {}
    # densities over the scope, measured on the weights themselves
    for which, model in (("g", st.G), ("d", st.D)):
        params = scope_parameters(model, config.scope)
        total = sum(p.numel() for p in params.values())
        res[f"density_{which}"] = sum(int((p != 0).sum()) for p in params.values()) / total
    res["scope"] = config.scope
    method = plugins.methods.get(config.method)
    defaults = {o.name: o.default for o in method.options}
    res["variant"] = ",".join(f"{k}={v}" for k, v in config.method_options if defaults.get(k) != v)
    if st.g_masks is not None:
        res["exploration_rate"] = st.g_masks.exploration_rate()
        res["g_layer_density"] = st.g_masks.layer_density()
    # FLOPs, normalised to the dense GAN of the same arch and preset
    g_dens = st.g_masks.layer_density() if st.g_masks else None
    res["train_flops"] = ctx.total_train_flops()
    res["test_flops"] = ctx.flops.test(g_dens)
    dense = _dense_flops(config, ctx, plugins)
    res["train_flops_rel"] = res["train_flops"] / (dense.step() * spec.steps)
    res["test_flops_rel"] = res["test_flops"] / dense.test()
    # metrics of the evaluated generator
    metrics = [plugins.metrics.get(m) for m in config.metrics]
    flags = {getattr(m, "fidelity_flag", "") for m in metrics} - {""}
    if st.step_seconds:  # measured time beside FLOPs, of the final phase (CUDA events on a GPU)
        # the mean: the phase's step time over its steps, topology updates and balance-ratio probes included (a
        # median would drop them, and dynamic methods would look as cheap as static ones); the median beside it
        res["train_s_per_step"] = sum(st.step_seconds) / len(st.step_seconds)
        res["train_s_per_step_median"] = statistics.median(st.step_seconds)
    if hasattr(os, "getloadavg"):  # times measured beside other work are not the method's: say how busy it was
        res["load_per_core"] = os.getloadavg()[0] / (os.cpu_count() or 1)
    from sparsebench.kernels import describe, for_sampling

    sampling = for_sampling(config.kernels, st.eval_model, st.g_masks, spec, SAMPLE_BATCH)
    try:
        watch = Stopwatch(device)  # the device's queue drained at both ends: CUDA runs asynchronously
        watch.start()
        images = sample(
            st.eval_model,
            spec.eval_samples,
            spec.z_dim,
            ctx.num_classes,
            device,
            seed=stream_seed(config.seed, "eval-samples"),
            batch=SAMPLE_BATCH,
        )
        res["infer_ms_per_image"] = 1000.0 * watch.stop() / spec.eval_samples
    finally:
        if sampling is not None:
            sampling.restore()
    if sampling is not None:
        res["kernel_layers_sampling"] = describe("G", sampling.layers)
    samples = SampleSet(ev, images, flags)
    for m in metrics:
        res.update(m.compute(samples))
    res.update(score(spec, st.curve, res))
    floor = ev.floor(flags, spec.eval_samples)  # at this run's sample count (sparsebench.metrics.floor)
    if "frechet_inception_distance" in floor:
        res["fid_floor"] = floor["frechet_inception_distance"]
        res["fid_floor_inf"] = floor["fid_inf"]
        res["fid_floor_se"] = floor["se"]
        res["fid_floor_method"] = floor["description"]
    res["eval_weights"] = evaluated_weights(st, ctx.info.pop("eval_weights", "ema"))
    res["extractor"] = config.train.extractor
    res["extractor_accuracy"] = ev.extractor_accuracy
    res["data_hash"] = ev.data_hash
    res["extractor_hash"] = ev.extractor_hash
    res["eval_samples"] = spec.eval_samples
    res.update(ctx.info)
    recorder = ctx.services.recorder  # the claim may have gone while this run was evaluated: looked at again
    claimed = None if recorder is None else recorder.check_claim
    atomic_save({"images": images[:64].clone()}, ctx.run_dir / "samples.pt", claimed)  # not the whole storage
    return res


def evaluated_weights(state, declared: str) -> str:
    """The label of the weights really evaluated: the method's (`ema`, `sema`) only if the average ran;
    before `ema_start` the (S)EMA is a copy of G, so a run that short evaluated G's own weights (`raw`)."""
    averaged = state.ema is not None and state.step > state.ema.start
    return declared if averaged else "raw"


def score(spec, curve: list[tuple[int, float]], res: dict) -> dict[str, Any]:
    """The run's FID under the preset's score (`TrainSpec.score_last`): the mean over the last evaluations of
    its curve, the final one included; the final evaluation's own FID stays as `fid_final`."""
    if "fid" not in res or res["fid"] is None:
        return {}
    out: dict[str, Any] = {"fid_final": res["fid"]}
    if spec.score_last > 1:
        points = [v for _, v in curve][-(spec.score_last - 1) :] + [res["fid"]]
        if len(points) < spec.score_last:
            raise RuntimeError(
                f"the score needs the last {spec.score_last} evaluations, the curve has {len(points)}: "
                f"eval_every={spec.eval_every} from {spec.eval_from:g} of {spec.steps} steps gives too few"
            )
        out["fid"] = sum(points) / len(points)
        out["fid_score"] = f"mean of last {spec.score_last}"
    return out


def _dense_flops(config: RunConfig, ctx: RunContext, plugins: Plugins):
    """The dense GAN's FLOP counts at full width (a run at another width is normalised to it)."""
    if ctx.width == 1.0:
        return ctx.flops
    from sparsebench.flops import count_gan

    arch = plugins.archs.get(config.arch)
    G, D = arch.build(config.train, ctx.num_classes, 1.0, **dict(config.arch_options))
    return count_gan(G, D, config.train, config.scope, ctx.num_classes)
