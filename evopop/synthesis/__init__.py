"""The method: genetic encoding and stochastic synthesis of offspring networks.

Pure functions over tensors: no Ray, no files, no configs. Everything else in evopop calls this.

    arch = trace_architecture(model, example_input)      # layers + neuron wiring, once per network
    parent = Genome.full(arch)                            # the ancestor: every synapse alive
    child = synthesize(arch, synaptic_weights(model, arch), parent,
                       Environment(c=0.4), seed=offspring_seed(run_seed, 2, "g1-0", 3))
    counts = count(arch, child)                           # synapses, neurons, params, MACs
    mated = mate(arch, [(weights_a, genome_a), (weights_b, genome_b)])   # two parents (mating.py)
    child = synthesize(arch, mated.strengths, mated.genome, Environment(c=0.4), seed,
                       cluster_strengths=mated.cluster_strengths)
"""

from .architecture import Architecture, trace_architecture
from .baselines import matched_genome
from .counting import Counts, LayerCount, count, efficiency
from .death import effective_genome, kill_orphans, kill_unused
from .environment import Environment, Schedule
from .genome import Genome
from .layers import SynapticLayer, find_synaptic_layers
from .masking import MaskedParameters, genome_from_weights, parameter_masks
from .mating import Mated, mate, mean_weights
from .probability import budget_scale, normalizers, synaptic_probability
from .sampling import sample_layer, synaptic_weights, synthesize
from .seeding import derive_seed, offspring_seed

__all__ = [
    "Architecture",
    "trace_architecture",
    "Counts",
    "LayerCount",
    "count",
    "efficiency",
    "kill_orphans",
    "kill_unused",
    "effective_genome",
    "Environment",
    "Schedule",
    "Genome",
    "SynapticLayer",
    "find_synaptic_layers",
    "MaskedParameters",
    "genome_from_weights",
    "parameter_masks",
    "budget_scale",
    "normalizers",
    "synaptic_probability",
    "derive_seed",
    "offspring_seed",
    "sample_layer",
    "synaptic_weights",
    "synthesize",
    "matched_genome",
    "Mated",
    "mate",
    "mean_weights",
]
