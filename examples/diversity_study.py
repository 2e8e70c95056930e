#!/usr/bin/env python
"""How diverse are the offspring of one ancestor, and how does the environment factor C shape it?

One ancestor (the tiny shapes CNN, trained once), many offspring under several C (budget mode: each
layer keeps a fraction C of its synapses in expectation). Two complementary measurements:

1. Synthesis only (the mutation itself, isolated). S offspring per C are synthesized directly with
   `evopop.synthesis.synthesize` from the trained ancestor, with the engine's own seeds
   (`offspring_seed(run seed, 2, "g1-0", i)`), and not trained. Training never changes a genome
   (masks are fixed at synthesis), so their structural diversity is exactly that of the offspring
   a run would train; their functional diversity and accuracy are those of the mutation before any
   recovery by training. No Ray, fractions of a second per offspring, so S can be large.
2. Real runs (what selection then sees). For each C, `evopop` runs generations=2 with
   ``offspring`` offspring and selection.rule=all: the same ancestor (trained in the first run and
   loaded from its checkpoint by the others, `ancestor.checkpoint`), the same run seed, so offspring
   i of every run is drawn from the same uniforms ("common random numbers": the comparison across C
   is not blurred by different draws). Each generation's diversity is recorded as the engine will
   (`write_generation_diversity` with the network's outputs on a fixed held-out batch), and the
   report of one run is built.

The first ``offspring`` synthesis-only genomes are checked bit-identical to the run's (mask digests).

Reference curves for the structural diversity: if every synapse were kept independently with its
probability q_k = min(1, s_L exp(|w_k|/Z - 1)), two siblings would share E|A n B| = sum q_k^2 out of
E|A u B| = sum (2 q_k - q_k^2) synapses ("expected, independent synapses"; neuron death is ignored);
with one keep probability C for all synapses, the Jaccard distance would be 1 - C / (2 - C), the
most diversity a budget C allows (weight-driven probabilities concentrate survival on the strong).

    python examples/diversity_study.py                          # about 1-2 minutes on 2 CPU cores
    python examples/diversity_study.py --c 0.2 0.4 0.6 0.8 --samples 64 --offspring 6
Writes OUT/diversity_vs_c.png, OUT/diversity_vs_c.csv, the runs OUT/c=<C>/ and a report in one of them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evopop.analysis.diversity import (  # noqa: E402
    NETWORK,
    functional_disagreement,
    living_fractions,
    neuron_distances,
    pack_genomes,
    spread,
    synapse_distances,
)
from evopop.analysis.figures import new_figure, render  # noqa: E402
from evopop.analysis.generation_diversity import (  # noqa: E402
    checkpoint_outputs,
    held_out_batch,
    write_generation_diversity,
)
from evopop.analysis.report import build_report  # noqa: E402
from evopop.config import load_config  # noqa: E402
from evopop.records.run import RunRecords  # noqa: E402
from evopop.synthesis import (  # noqa: E402
    Environment,
    Genome,
    normalizers,
    offspring_seed,
    parameter_masks,
    synaptic_probability,
    synaptic_weights,
    synthesize,
    trace_architecture,
)
from evopop.synthesis.sampling import layer_scales  # noqa: E402
from evopop.tasks.registry import build_task  # noqa: E402

BATCH = 128  # held-out images for the functional disagreement (first items of the val set)


def overrides(args, c: float, ancestor: str | None) -> list[str]:
    o = [
        f"run.name=diversity-c{c}",
        "evolution.generations=2",
        f"evolution.offspring={args.offspring}",
        "selection.rule=all",
        f"evolution.environment.c={c}",
        "evolution.environment.mode=budget",
        f"task.args.train_size={args.train_size}",
        "task.args.val_size=512",
        f"ancestor.epochs={args.ancestor_epochs}",
    ]
    if ancestor:
        o.append(f"ancestor.checkpoint={ancestor}")
    return o


def run_evolution(args, c: float, ancestor: str | None, run_dir: Path):
    """One evopop run (resumed if its directory exists), with the diversity recorded per generation."""
    from evopop.api import evolve

    config = load_config(ROOT / "configs" / "tiny.yaml", overrides(args, c, ancestor))
    records = RunRecords(str(run_dir))
    if not records.exists():
        records.write_config(config.to_yaml())
    evolve(config, str(run_dir))
    task = build_task(config.task.name, config.task.args)
    arch = trace_architecture(task.build_model(), task.example_input())
    outputs = checkpoint_outputs(task, held_out_batch(task, BATCH))
    for generation in records.generations():
        write_generation_diversity(
            records, generation, arch, outputs=outputs, note=f"argmax disagreement on val[:{BATCH}]"
        )
    return config, records


def expected_jaccard(arch, weights, parent: Genome, c: float) -> float:
    """Jaccard distance of two siblings if synapses were kept independently (no neuron death)."""
    z = normalizers(dict(weights), parent.masks, "layer")
    scales = layer_scales(arch, weights, parent, Environment(c=c, mode="budget"), z)
    shared = union = 0.0
    for layer in arch.layers:
        q = (
            (synaptic_probability(weights[layer.name], parent.masks[layer.name], z[layer.name]) * scales[layer.name])
            .clamp(max=1.0)
            .double()
        )
        shared += float((q * q).sum())
        union += float((2 * q - q * q).sum())
    return 1.0 - shared / union


def synthesis_only(args, config, records: RunRecords, cs, run_digests: dict) -> pd.DataFrame:
    """Per C: S offspring synthesized from the ancestor, measured untrained."""
    task = build_task(config.task.name, config.task.args)
    model = task.build_model()
    arch = trace_architecture(model, task.example_input())
    payload = records.read_checkpoint("g1-0")
    model.load_state_dict(payload.weights)
    ancestor = {k: v.clone() for k, v in model.state_dict().items()}
    parent = Genome.from_state_dict(payload.masks)
    weights = {k: w.clone() for k, w in synaptic_weights(model, arch).items()}  # the model is masked below
    val = task.eval_sets()["val"]
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = torch.as_tensor([int(val[i][1]) for i in range(len(val))])
    rows = []
    for c in cs:
        env = Environment(c=c, mode="budget")
        genomes, outs, accuracy = [], [], []
        for i in range(args.samples):
            genome = synthesize(arch, weights, parent, env, offspring_seed(config.run.seed, 2, "g1-0", i))
            if i < args.offspring:
                assert genome.digest() == run_digests[c][f"g2-{i}"], "synthesis differs from the run's genome"
            genomes.append(genome)
            model.load_state_dict(ancestor)
            with torch.no_grad():
                for name, mask in parameter_masks(arch, genome).items():
                    model.get_parameter(name).mul_(mask.to(torch.float32).view_as(model.get_parameter(name)))
                model.eval()
                logits = model(images)
            outs.append(logits[:BATCH])
            accuracy.append(float((logits.argmax(1) == labels).float().mean()))
        packed = pack_genomes(genomes, arch.layers)
        syn, neu = synapse_distances(packed)[NETWORK], neuron_distances(packed)[NETWORK]
        iu = torch.triu_indices(len(genomes), len(genomes), 1)
        jac = syn.jaccard[iu[0], iu[1]].numpy()
        func = functional_disagreement(outs)[iu[0], iu[1]].numpy()
        rows.append(
            {
                "C": c,
                "samples": args.samples,
                "kept": spread(living_fractions(packed)[NETWORK].numpy())["mean"],
                "jaccard": jac.mean(),
                "jaccard_std": jac.std(),
                "jaccard_min": jac.min(),
                "jaccard_max": jac.max(),
                "jaccard_expected": expected_jaccard(arch, weights, parent, c),
                "jaccard_uniform": 1 - c / (2 - c),
                "hamming_fraction": syn.hamming_fraction[iu[0], iu[1]].mean().item(),
                "neuron_jaccard": neu.jaccard[iu[0], iu[1]].mean().item(),
                "disagreement_untrained": func.mean(),
                "disagreement_untrained_min": func.min(),
                "disagreement_untrained_max": func.max(),
                "accuracy_untrained": np.mean(accuracy),
                "accuracy_untrained_std": np.std(accuracy),
                "accuracy_untrained_range": np.ptp(accuracy),
                "_acc_untrained": accuracy,
            }
        )
    return pd.DataFrame(rows)


def trained_spread(records: RunRecords) -> dict:
    """Sibling diversity of the run's trained offspring (generation 2), from the recorded summary."""
    summary = pd.read_parquet(records.storage.path("diversity_summary", "generation=2"))
    s = summary[(summary["group"] == "siblings") & (summary["scope"] == NETWORK)].set_index("quantity")
    population = records.population(2)
    return {
        "jaccard_run": s.loc["jaccard", "mean"],
        "disagreement_trained": s.loc["functional_disagreement", "mean"],
        "disagreement_trained_min": s.loc["functional_disagreement", "min"],
        "disagreement_trained_max": s.loc["functional_disagreement", "max"],
        "accuracy_trained": s.loc["val_accuracy", "mean"],
        "accuracy_trained_std": s.loc["val_accuracy", "std"],
        "accuracy_trained_range": s.loc["val_accuracy", "range"],
        "_acc_trained": population.loc[population["status"] == "ok", "val_accuracy"].tolist(),
    }


def figure(table: pd.DataFrame, ancestor_accuracy: float, curve: pd.DataFrame):
    fig = new_figure(15, 4.4)
    a, b, c = fig.subplots(1, 3)
    cs = table["C"]
    a.errorbar(
        cs,
        table["jaccard"],
        yerr=[table["jaccard"] - table["jaccard_min"], table["jaccard_max"] - table["jaccard"]],
        fmt="o",
        capsize=4,
        color="#1f77b4",
        label="measured, synthesis only (mean, min–max)",
        zorder=3,
    )
    a.plot(cs, table["jaccard_run"], "s", mfc="none", ms=10, color="#d62728", label="measured, the runs' offspring")
    a.plot(curve["C"], curve["expected"], "-", color="#1f77b4", alpha=0.6, label="expected, independent synapses")
    a.plot(curve["C"], 1 - curve["C"] / (2 - curve["C"]), "--", color="grey", label="uniform keep probability C")
    a.set_xlabel("environment factor C (expected kept fraction per layer)")
    a.set_ylabel("Jaccard distance between siblings (0–1)")
    a.set_title("Structural diversity of siblings")
    a.legend(fontsize=8)
    a.grid(True, alpha=0.3)
    for name, color, label, dx in (
        ("untrained", "#ff7f0e", "synthesized, not trained", -0.006),
        ("trained", "#2ca02c", "after training (run)", 0.006),
    ):
        mean = table[f"disagreement_{name}"]
        b.errorbar(
            cs + dx,
            mean,
            yerr=[mean - table[f"disagreement_{name}_min"], table[f"disagreement_{name}_max"] - mean],
            fmt="o-",
            capsize=4,
            color=color,
            label=label,
        )
    b.set_xlabel("environment factor C")
    b.set_ylabel(f"prediction disagreement between siblings\n(fraction of {BATCH} held-out images)")
    b.set_title("Functional diversity of siblings (mean, min–max)")
    b.set_ylim(bottom=0)
    b.legend(fontsize=8)
    b.grid(True, alpha=0.3)
    width = 0.035
    for offset, key, color, label in (
        (-width / 1.6, "_acc_untrained", "#ff7f0e", "synthesized, not trained"),
        (width / 1.6, "_acc_trained", "#2ca02c", "after training (run)"),
    ):
        parts = c.boxplot(list(table[key]), positions=cs + offset, widths=width, patch_artist=True, manage_ticks=False)
        for box in parts["boxes"]:
            box.set_facecolor(color)
            box.set_alpha(0.6)
        c.plot([], [], "s", color=color, alpha=0.6, label=label)
    c.axhline(ancestor_accuracy, color="black", ls=":", label=f"ancestor ({ancestor_accuracy:.3f})")
    c.set_xlim(cs.min() - 0.1, cs.max() + 0.1)
    c.set_xticks(cs)
    c.set_xlabel("environment factor C")
    c.set_ylabel("validation accuracy (fraction, 512 images)")
    c.set_title("Accuracy spread of siblings")
    c.legend(fontsize=8, loc="lower right")
    c.grid(True, alpha=0.3)
    fig.suptitle("Mutation diversity of one ancestor's offspring vs the environment factor C")
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/diversity-study", help="output directory")
    parser.add_argument("--c", type=float, nargs="+", default=[0.3, 0.5, 0.8], help="environment factors")
    parser.add_argument("--offspring", type=int, default=8, help="trained offspring per run")
    parser.add_argument("--samples", type=int, default=32, help="synthesis-only offspring per C (>= --offspring)")
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--ancestor-epochs", type=int, default=15)
    parser.add_argument(
        "--report", type=float, default=None, help="C of the run to build the report of (default: middle)"
    )
    args = parser.parse_args(argv)
    args.samples = max(args.samples, args.offspring)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    runs, ancestor = {}, None
    for c in args.c:
        run_dir = out / f"c={c}"
        print(f"== run C={c}: {run_dir}", flush=True)
        config, records = run_evolution(args, c, ancestor, run_dir)
        runs[c] = (config, records)
        ancestor = ancestor or records.storage.path(records.checkpoint_path("g1-0"))
    digests = {
        c: dict(zip(r.population(2)["individual_id"], r.population(2)["mask_digest"])) for c, (_, r) in runs.items()
    }

    print("== synthesis only", flush=True)
    first_config, first_records = runs[args.c[0]]
    table = synthesis_only(args, first_config, first_records, args.c, digests)
    trained = pd.DataFrame([{"C": c, **trained_spread(r)} for c, (_, r) in runs.items()])
    table = table.merge(trained, on="C")
    ancestor_accuracy = float(first_records.population(1)["val_accuracy"].iloc[0])

    show = table[
        [
            "C",
            "kept",
            "jaccard",
            "jaccard_std",
            "jaccard_expected",
            "jaccard_uniform",
            "hamming_fraction",
            "neuron_jaccard",
            "disagreement_untrained",
            "disagreement_trained",
            "accuracy_untrained",
            "accuracy_untrained_std",
            "accuracy_trained",
            "accuracy_trained_std",
            "accuracy_trained_range",
        ]
    ]
    print(
        f"\nancestor val_accuracy {ancestor_accuracy:.4f}; {args.samples} synthesized + {args.offspring} trained "
        f"offspring per C; the first {args.offspring} synthesized genomes equal the runs' (mask digests)\n"
    )
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        print(show.to_string(index=False))
    show.to_csv(out / "diversity_vs_c.csv", index=False)

    # the expected curve on a fine grid of C, from the same ancestor
    task = build_task(first_config.task.name, first_config.task.args)
    model = task.build_model()
    arch = trace_architecture(model, task.example_input())
    payload = first_records.read_checkpoint("g1-0")
    model.load_state_dict(payload.weights)
    parent, weights = Genome.from_state_dict(payload.masks), synaptic_weights(model, arch)
    grid = np.round(np.linspace(0.1, 0.95, 18), 3)
    curve = pd.DataFrame({"C": grid, "expected": [expected_jaccard(arch, weights, parent, float(c)) for c in grid]})
    (out / "diversity_vs_c.png").write_bytes(render(figure(table, ancestor_accuracy, curve)))

    report_c = args.report if args.report is not None else args.c[len(args.c) // 2]
    index = build_report(runs[report_c][1].uri)
    print(f"\nfigure: {out / 'diversity_vs_c.png'}\ntable:  {out / 'diversity_vs_c.csv'}\nreport: {index}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
