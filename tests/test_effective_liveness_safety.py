"""Effective liveness must never remove a synapse that can influence the output: for each network
(most of them found by review as holes in the wiring), the masked network under the effective genome
gives the same outputs as under the method's genome, on random inputs.

Each case: (name, model, input, genome edit or None); the cascades run on the edited genome."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evopop.synthesis import Genome, MaskedParameters, kill_orphans, parameter_masks, trace_architecture
from evopop.synthesis.death import effective_genome


class Sub(nn.Conv2d):  # user subclass: fx traces into it -> F.conv2d(x, get_attr weight)
    def forward(self, x):
        return super().forward(x)


class A(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv2d(3, 4, 3, padding=1)
        s.b = Sub(4, 4, 3, padding=1)
        s.c = nn.Conv2d(4, 2, 1)

    def forward(s, x):
        return s.c(torch.relu(s.b(torch.relu(s.a(x)))))


class B(nn.Module):
    def __init__(s):
        super().__init__()
        s.inp = nn.Linear(8, 16)
        s.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        s.out = nn.Linear(16, 3)

    def forward(s, x):
        return s.out(s.enc(s.inp(x)))


class B2(nn.Module):
    def __init__(s):
        super().__init__()
        s.att = nn.MultiheadAttention(8, 2, batch_first=True)
        s.out = nn.Linear(8, 3)

    def forward(s, x):
        return s.out(s.att(x, x, x)[0])


class C(nn.Module):
    def __init__(s):
        super().__init__()
        s.emb = nn.Linear(6, 8)
        s.h = nn.Linear(8, 8)

    def forward(s, x):
        return F.linear(torch.relu(s.h(s.emb(x))), s.emb.weight.t())  # tied head


class D(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv2d(3, 8, 3, padding=1)
        s.gn = nn.GroupNorm(2, 8)
        s.c = nn.Conv2d(8, 2, 1)

    def forward(s, x):
        return s.c(s.gn(s.a(x)))


def dmask(g):
    g.masks["c"][:, 1:4] = False  # c no longer reads a's neurons 1..3 (same GN group as 0)


class E(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv2d(3, 4, 1)
        s.b = nn.Conv2d(3, 4, 1)
        s.c = nn.Conv2d(4, 2, 1)

    def forward(s, x):
        h = s.a(x)
        h.add_(s.b(x))
        return s.c(h)


class E2(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv2d(3, 4, 1)
        s.b = nn.Conv2d(3, 4, 1)
        s.c = nn.Conv2d(4, 2, 1)

    def forward(s, x):
        h = s.a(x)
        h += s.b(x)
        return s.c(h)


class G(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Linear(4, 3)

    def forward(s, x):
        return s.a(x).T


class G2(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Linear(4, 3)
        s.b = nn.Linear(3, 2)

    def forward(s, x):
        return s.b(s.a(x).mT.mT)


class H(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv2d(3, 4, 1)
        s.b = nn.Conv2d(3, 4, 1)
        s.c = nn.Conv2d(4, 2, 1)

    def forward(s, x):
        return s.c(s.a(x).clamp(min=s.b(x)))


class KwargAdd(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv2d(3, 4, 1)
        s.b = nn.Conv2d(3, 4, 1)
        s.c = nn.Conv2d(4, 2, 1)

    def forward(s, x):
        return s.c(torch.add(s.a(x), other=s.b(x)))


class C2(nn.Module):
    def __init__(s):
        super().__init__()
        s.emb = nn.Linear(6, 8)
        s.h = nn.Linear(8, 8)

    def forward(s, x):
        return F.linear(torch.relu(s.h(s.emb(x))), s.emb.weight.t())


def cm(g):
    g.masks["h"][:, 0] = False


class P(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Linear(4, 6)
        s.pool = nn.MaxPool1d(3, 1, 1)
        s.b = nn.Linear(6, 2)

    def forward(s, x):
        return s.b(s.pool(s.a(x)))  # x: (N,T,4): pool over features


def pm(g):
    g.masks["b"][:, 0] = False


class P2(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv1d(3, 6, 1)
        s.pool = nn.AvgPool2d(3, 1, 1)
        s.b = nn.Conv1d(6, 2, 1)

    def forward(s, x):
        return s.b(s.pool(s.a(x)))  # AvgPool2d on 3-D = unbatched (C,H,W): pools over channels


def pm2(g):
    g.masks["b"][:, 0] = False


class PAD(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv2d(3, 4, 1)
        s.b = nn.Conv2d(4, 2, 1)

    def forward(s, x):
        return s.b(F.pad(s.a(x), (0, 0, 0, 0, 1, -1)))  # shift channels by one


def padm(g):
    g.masks["b"][:, 0] = False
    g.masks["b"][:, 2:] = False  # reads channel 1 only = neuron 0


class U(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv1d(8, 8, 1)
        s.b = nn.Linear(8, 8)
        s.c = nn.Conv1d(8, 2, 1)

    def forward(s, x):
        return s.c(s.a(x) + s.b(x))  # conv map dim1 + linear map dim2, square


def um(g):
    g.masks["c"][:, 0] = False


class V(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Linear(4, 3)

    def forward(s, x):
        return s.a(x) * 2


class V2(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Linear(4, 3)
        s.b = nn.Linear(4, 3)

    def forward(s, x):
        return torch.cat([s.a(x), s.b(x)], 0)


class W(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv2d(3, 4, 1)
        s.b = nn.Linear(4, 2)

    def forward(s, x):
        h = s.a(x)
        return s.b(h.mean((2, 3))), h.permute(0, 2, 3, 1), {"z": h.view(h.size(0), -1).sum(1)}


def wm(g):
    g.masks["b"][:] = False


class X(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv2d(3, 4, 3, padding=1)
        s.b = nn.Linear(4 * 4 * 4, 2)

    def forward(s, x):
        return s.b(torch.flatten(F.interpolate(torch.relu(s.a(x)), scale_factor=0.5), 1))


def xm(g):
    g.masks["b"][:, :16] = False


class Y(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv2d(3, 4, 1)
        s.b = nn.Conv2d(4, 4, 1)
        s.scale = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(s, x):
        h = s.a(x)
        return s.b(h) * s.scale + h.sum(1, keepdim=True)


CASES = [
    ("conv subclass traced through (F.conv2d on get_attr weight)", A(), torch.randn(2, 3, 8, 8), None),
    ("nn.TransformerEncoderLayer (leaf module with Linears inside)", B(), torch.randn(2, 5, 8), None),
    ("nn.MultiheadAttention out_proj", B2(), torch.randn(2, 5, 8), None),
    ("weight tying via get_attr of a called layer", C(), torch.randn(2, 6), None),
    ("GroupNorm mixes channels of a group", D(), torch.randn(2, 3, 8, 8), dmask),
    ("in-place add_ (result node unused)", E(), torch.randn(2, 3, 4, 4), None),
    ("h += g", E2(), torch.randn(2, 3, 4, 4), None),
    ("getattr .T -> map None, no sink", G(), torch.randn(2, 4), None),
    ("getattr .mT.mT into Linear", G2(), torch.randn(2, 4), None),
    ("clamp(min=tensor) preserving method, 2nd tensor ignored", H(), torch.randn(2, 3, 4, 4), None),
    ("torch.add(h, other=g) kwargs ignored", KwargAdd(), torch.randn(2, 3, 4, 4), None),
    ("weight tying, part of tied layer unread by synapses", C2(), torch.randn(2, 6), cm),
    ("MaxPool1d over Linear feature dim (N,T,F)", P(), torch.randn(2, 5, 4), pm),
    ("AvgPool2d on (N,C,L) pools over channels", P2(), torch.randn(2, 3, 7), pm2),
    ("F.pad shifting channel dim", PAD(), torch.randn(2, 3, 4, 4), padm),
    ("union of maps along different dims (square)", U(), torch.randn(2, 8, 8), um),
    ("unbatched Linear (rank-1) * scalar", V(), torch.randn(4), None),
    ("unbatched cat dim0", V2(), torch.randn(4), None),
    ("tuple/dict outputs, mean/permute/view/size", W(), torch.randn(2, 3, 4, 4), wm),
    ("interpolate+flatten into Linear", X(), torch.randn(2, 3, 8, 8), xm),
    (
        "get_attr param product + broadcast",
        Y(),
        torch.randn(2, 3, 4, 4),
        lambda g: g.masks["b"].__setitem__((slice(None), 0), False),
    ),
]


def _masked(model, arch, genome):
    m = copy.deepcopy(model)
    MaskedParameters(m, parameter_masks(arch, genome))
    return m.eval()


def _flat(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        return torch.cat([_flat(x).reshape(-1) for x in out])
    if isinstance(out, dict):
        return torch.cat([_flat(v).reshape(-1) for v in out.values()])
    return out.reshape(-1)


@pytest.mark.parametrize("name, model, x, edit", CASES, ids=[c[0] for c in CASES])
def test_the_effective_genome_computes_what_the_genome_computes(name, model, x, edit):
    torch.manual_seed(0)
    model.eval()
    arch = trace_architecture(model, x)
    genome = Genome.full(arch)
    if edit:
        edit(genome)
    kill_orphans(arch, genome)
    effective = effective_genome(arch, genome)
    a, b = _masked(model, arch, genome), _masked(model, arch, effective)
    with torch.no_grad():
        for _ in range(3):
            xi = torch.randn_like(x)
            torch.testing.assert_close(_flat(b(xi)), _flat(a(xi)), rtol=0, atol=1e-6)


def test_the_check_is_not_vacuous_something_is_removed_where_it_may_be():
    removed = {}
    for name, model, x, edit in CASES:
        arch = trace_architecture(model, x)
        genome = Genome.full(arch)
        if edit:
            edit(genome)
        kill_orphans(arch, genome)
        effective = effective_genome(arch, genome)
        removed[name] = sum(int(genome.masks[k].sum() - effective.masks[k].sum()) for k in genome.masks)
    assert removed["interpolate+flatten into Linear"] == 27
