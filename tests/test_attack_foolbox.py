"""Cross-check against foolbox 3 (JAX backend, CPU): float model, 16-bit integer model.

hwq attacks the 16-bit integer model (16-bit inputs and activations) with the float model's
gradient; foolbox attacks the float model itself. Same inputs, labels, bounds and settings.
foolbox's PGD returns its last iterate, hwq's keeps the first adversarial step, so the PGD
comparison unions foolbox's runs with 1..T steps (its any-step success)."""

from __future__ import annotations

import numpy as np
import pytest
from builders import torch_style_mlp

import hwq
from hwq.attack import FGSM, PGD
from hwq.attack.gradients import FloatGradient
from hwq.onnx.importer import graph_from_model

fb = pytest.importorskip("foolbox")
jax = pytest.importorskip("jax")
jnp = jax.numpy

N, EPS = 1000, [0.02, 0.05, 0.1]


@pytest.fixture(scope="module", params=["Relu", "Sigmoid"])
def case(request):
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    n_in, hidden, n_out = 20, 16, 5
    w1 = rng.uniform(-1, 1, (hidden, n_in)).astype(np.float32)
    b1 = (-0.5 * w1.sum(axis=1)).astype(np.float32)
    w2 = rng.uniform(-1, 1, (n_out, hidden)).astype(np.float32)
    b2 = np.zeros(n_out, np.float32)
    graph = graph_from_model(torch_style_mlp(w1, b1, w2, b2, act=request.param))
    x = rng.uniform(0, 1, (N, n_in))
    net = hwq.quantize(graph, 16, calibration=x, bounds=(0, 1), act_bits=16, input_bits=16)
    act = jax.nn.relu if request.param == "Relu" else jax.nn.sigmoid
    W1, B1, W2, B2 = (jnp.asarray(v, dtype=jnp.float64) for v in (w1, b1, w2, b2))

    def logits(v):
        return act(v @ W1.T + B1) @ W2.T + B2

    y = np.asarray(jnp.argmax(logits(jnp.asarray(x)), axis=1))
    return hwq.compile(net), graph, fb.JAXModel(logits, bounds=(0, 1)), x, y


def test_fgsm_matches_foolbox(case):
    program, graph, fmodel, x, y = case
    _, _, success = fb.attacks.FGSM()(fmodel, jnp.asarray(x), jnp.asarray(y), epsilons=EPS)
    ours = hwq.attack(program, x, y, EPS, method=FGSM(), gradient=FloatGradient(graph), bounds=(0, 1),
                      diagnostics=False)
    disagree = (np.asarray(success) != ours.success).sum(axis=1)
    assert np.all(disagree <= N // 1000), disagree
    assert ours.accuracy[-1] < 0.995  # the attack breaks something


def test_pgd_matches_foolbox(case):
    program, graph, fmodel, x, y = case
    steps, rel = 10, 0.1
    any_step = np.zeros((len(EPS), N), bool)
    for t in range(1, steps + 1):
        attack = fb.attacks.LinfPGD(rel_stepsize=rel, steps=t, random_start=False)
        any_step |= np.asarray(attack(fmodel, jnp.asarray(x), jnp.asarray(y), epsilons=EPS)[2])
    ours = hwq.attack(program, x, y, EPS, method=PGD(steps=steps, rel_stepsize=rel, random_start=False),
                      gradient=FloatGradient(graph), bounds=(0, 1), diagnostics=False)
    disagree = (any_step != ours.success).sum(axis=1)
    assert np.all(disagree <= N // 1000), disagree
