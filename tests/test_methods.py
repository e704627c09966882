"""The learning rules compute the credit they are specified to compute."""
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import faeval
from faeval import diagnostics as D
from faeval.errors import MissingAuxStateError
from faeval.methods import METHODS, LocalRule, UnsupportedArchError, build_method, register_method


def _xy(n=64, shape=(12,), classes=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g).to(dtype), torch.randint(0, classes, (n,), generator=g)


def _tiny(seed=0, d_in=12, classes=5, **kw):
    kw = {"width": 16, "depth": 3, **kw}
    return faeval.build_model("resmlp", (d_in,), classes, seed=seed, **kw)


def _cos(a, b):
    return D.per_sample_cosine(a, b).mean().item()


# -- BP -----------------------------------------------------------------------------------
def test_bp_step_gives_autograd_gradients():
    m = _tiny()
    x, y = _xy()
    build_method("bp", m).step(x, y)
    ours = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=0, atol=0, msg=n)


def test_bp_penalty_gradient_is_that_of_the_penalised_loss():
    m, lam = _tiny(w2_std=0.3), 0.05
    x, y = _xy()
    build_method("bp", m, penalty=lam).step(x, y)
    ours = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    h, pen = m.embed(x), 0.0
    for blk in m.blocks:                      # written out: h_{l+1} = h_l + f_l(h_l)
        f = blk(h)
        pen = pen + f.pow(2).sum(1).mean()
        h = h + f
    (F.cross_entropy(m.readout(h), y) + lam * pen).backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)


def test_bp_credit_is_the_bp_gradient():
    m = _tiny()
    x, y = _xy()
    _, grads, _ = D.bp_grads(m, x, y)
    for a, g in zip(build_method("bp", m).credit(x, y), grads):
        torch.testing.assert_close(a, g)


# -- FA -----------------------------------------------------------------------------------
def _linearised(seed=0):
    """A ResMLP whose blocks are linear (no LayerNorm, identity activation): J_l = I + W2 W1."""
    m = _tiny(seed=seed, w2_std=0.3).double()
    for b in m.blocks:
        b.ln, b.act = nn.Identity(), nn.Identity()
    return m


def test_fa_with_transposed_jacobians_is_bp():
    m = _linearised()
    x, y = _xy(dtype=torch.float64)
    fa = build_method("fa", m, seed=1)
    eye = torch.eye(16, dtype=torch.float64)
    fa.feedback = [(eye + b.w2.weight @ b.w1.weight).T for b in m.blocks]   # B_l = J_l^T
    _, grads, _ = D.bp_grads(m, x, y)
    credit = fa.credit(x, y)
    for l, (a, g) in enumerate(zip(credit, grads)):
        torch.testing.assert_close(a, g, rtol=1e-9, atol=1e-15, msg=f"layer {l}")


def test_fa_with_random_feedback_differs_from_bp():
    m = _linearised()
    x, y = _xy(dtype=torch.float64)
    _, grads, _ = D.bp_grads(m, x, y)
    gam = D.gamma_per_layer(build_method("fa", m, seed=1).credit(x, y), grads).mean
    assert gam[-1] == pytest.approx(1.0)                 # the top credit is the true gradient
    assert all(abs(g) < 0.5 for g in gam[:-1]), gam      # below it, random feedback


# -- DFA ----------------------------------------------------------------------------------
def test_dfa_credit_has_the_specified_form_and_survives_a_checkpoint():
    m = _tiny()
    x, y = _xy()
    dfa = build_method("dfa", m, seed=7)
    m.eval()
    with torch.no_grad():
        hs, logits = m.states(x)
    e = (logits.softmax(-1) - F.one_hot(y, 5)) / len(x)
    credit = dfa.credit(x, y)
    assert [B.shape for B in dfa.feedback] == [(5, 16)] * 4
    for a, B, h in zip(credit, dfa.feedback, hs):
        torch.testing.assert_close(a, (e @ B).view_as(h))
    # B ~ N(0, 1), unscaled
    allB = torch.cat([B.flatten() for B in dfa.feedback])
    assert abs(allB.std().item() - 1) < 0.2

    buf = io.BytesIO()
    torch.save(dfa.aux_state(), buf)
    buf.seek(0)
    again = build_method("dfa", m, seed=999, init_aux=False)
    with pytest.raises(MissingAuxStateError, match="never substituted"):
        again.credit(x, y)
    again.load_aux_state(torch.load(buf, weights_only=True))
    for a, b in zip(credit, again.credit(x, y)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = build_method("dfa", m, seed=999).credit(x, y)   # a different draw is a different credit
    assert not torch.allclose(other[1], credit[1])


@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_dfa_step_gradients_are_those_of_the_local_losses(lam):
    """Written out: CE(readout(sg h_L)) + <h_0, a_0> + sum_l <f_l(sg h_l), a_{l+1}> + lam sum_l mean ||f_l||^2."""
    m = _tiny(w2_std=0.3)
    x, y = _xy()
    dfa = build_method("dfa", m, seed=7, penalty=lam)
    dfa.step(x, y)
    ours = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    h0 = m.embed(x)
    h, loss = h0.detach(), 0.0
    fs = []
    for blk in m.blocks:
        f = blk(h)
        fs.append(f)
        h = h + f.detach()
    logits = m.readout(h)
    e = (logits.detach().softmax(-1) - F.one_hot(y, 5)) / len(x)
    a = [e @ B for B in dfa.feedback]
    loss = F.cross_entropy(logits, y) + (h0 * a[0]).sum()
    for l, f in enumerate(fs):
        loss = loss + (f * a[l + 1]).sum() + lam * f.pow(2).sum(1).mean()
    loss.backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-5, atol=1e-8, msg=n)


def test_dfa_fresh_feedback_credit_for_null_calibration():
    m = _tiny()
    x, y = _xy()
    dfa = build_method("dfa", m, seed=7)
    fresh = dfa.draw_feedback(torch.Generator().manual_seed(3))
    a_fresh = dfa.credit(x, y, feedback=fresh)
    assert not torch.allclose(a_fresh[0], dfa.credit(x, y)[0])
    assert dfa.feedback[0] is not fresh[0]                  # the rule's own matrices are untouched


# -- EP -----------------------------------------------------------------------------------
def test_ep_credit_aligns_with_bp_for_small_beta():
    m = _tiny().double()
    x, y = _xy(dtype=torch.float64)
    gam = D.gamma_of(build_method("ep", m, beta=1e-3), m, x, y)
    assert min(gam.mean) > 0.99, gam.mean
    # sign: a step against the credit lowers the loss
    credit = build_method("ep", m, beta=1e-3).credit(x, y)
    assert all(d < 0 for d in D.nudging(m, x, y, credit, etas=(1e-2,))["0.01"])


def test_ep_relaxation_divergence_is_recorded():
    m = _tiny(w2_std=0.3)
    x, y = _xy()
    ok = build_method("ep", m, step_size=0.1).step(x, y)["relax_ratio"].item()
    bad = build_method("ep", m, step_size=1.5).step(x, y)["relax_ratio"].item()
    assert ok < 1 < 100 < bad


# -- bridges ------------------------------------------------------------------------------
def test_state_bridge_with_the_true_forward_map_is_bp():
    m = _tiny(w2_std=0.3).double()
    x, y = _xy(dtype=torch.float64)

    def true_map(h, l, s):
        for k in range(l, m.depth):
            h = m.block_forward(k, h)
        return h

    sb = build_method("state_bridge", m, predictor=true_map)
    _, grads, _ = D.bp_grads(m, x, y)
    for l, (a, g) in enumerate(zip(sb.credit(x, y), grads)):
        torch.testing.assert_close(a, g, rtol=1e-9, atol=1e-15, msg=f"layer {l}")
    assert sb.aux_parameters() == [] and sb.aux_state() == {}


def test_state_bridge_learns_to_predict_h_L():
    m = _tiny()
    x, y = _xy(n=128)
    sb = build_method("state_bridge", m)
    opt = torch.optim.AdamW(sb.aux_parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        losses.append(sb.step(x, y)["bridge_loss"].item())
        opt.step()
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_credit_bridge_terminal_matching_learns_the_terminal_gradient():
    g_ = torch.Generator().manual_seed(0)
    m = faeval.build_model("resmlp", (16,), 10, seed=0, width=32, depth=2)
    x, y = torch.randn(128, 16, generator=g_), torch.randint(0, 10, (128,), generator=g_)
    cb = build_method("credit_bridge", m, seed=0, warmup=0)   # the bridge from the first step
    before = D.gamma_of(cb, m, x, y).mean[-1]
    opt = torch.optim.AdamW(cb.aux_parameters(), lr=1e-3)
    for _ in range(250):
        opt.zero_grad()
        cb.step(x, y)
        opt.step()
        cb.after_step()
    after = D.gamma_of(cb, m, x, y).mean[-1]
    assert abs(before) < 0.3 and after > 0.9, (before, after)
    # the EMA target moved towards V, but lags it
    p, t = next(cb.net.parameters()), next(cb.target.parameters())
    assert not torch.equal(p, t)


def test_credit_bridge_warmup_lets_dfa_drive_the_blocks_then_hands_over_at_the_right_step():
    """warmup=0.5 over 2 epochs of 8 steps: DFA's credit (the same B_l as a DFA run of the seed) trains the
    blocks for exactly the first 8 steps, V's credit from step 9 on; the schedule survives the store."""
    ds = faeval.load_dataset("synthetic", d=12, n_train=256, n_test=64, seed=0)     # 8 steps of 32 per epoch
    m = faeval.build_model("resmlp", (12,), 10, seed=0, width=16, depth=3)
    cb = build_method("credit_bridge", m, seed=1, warmup=0.5)
    dfa = build_method("dfa", m, seed=1)
    x, y = ds.x_test[:32], ds.y_test[:32]
    seen, block_grads_equal = [], []
    orig = cb.step

    def step(xb, yb):
        seen.append(cb.warming_up)
        for rule in (dfa, cb):          # the block gradients each rule would apply at this step
            m.zero_grad()
            rule.loss(xb, yb)[0].backward()
            if rule is dfa:
                ref = [p.grad.clone() for p in m.blocks.parameters()]
        block_grads_equal.append(all(torch.equal(a, p.grad) for a, p in zip(ref, m.blocks.parameters())))
        m.zero_grad()
        return orig(xb, yb)

    cb.step = step
    run = faeval.fit(m, cb, ds, 2, seed=0, progress=False, eval_n=64, batch_size=32)
    assert seen == [True] * 8 + [False] * 8
    assert block_grads_equal == [True] * 8 + [False] * 8
    assert cb.steps_done == 16 and cb.warmup_steps == 8 and not cb.warming_up
    # after the hand-over, credit() (and so Gamma) reads V's gradient, not DFA's
    assert not torch.equal(cb.credit(x, y)[1], dfa.credit(x, y)[1])
    assert faeval.methods.method_hparams("credit_bridge")["warmup"] == 0.2 and run.final["epoch"] == 2
    # without a schedule the rule refuses to train, naming the fix
    fresh = build_method("credit_bridge", _tiny(d_in=12, classes=10), seed=1)
    with pytest.raises(ValueError, match=r"warmup > 0 needs the run's length.*start_training"):
        fresh.step(x, y)
    with pytest.raises(ValueError, match=r"warmup=1: must be in \[0, 1\)"):
        build_method("credit_bridge", m, warmup=1)


def test_credit_bridge_warmup_is_recorded_in_the_run_and_reloads_after_the_hand_over(tmp_path):
    from faeval import store
    from faeval.config import canonical_config

    small = dict(dataset="synthetic", d=12, n_train=256, n_test=64, width=16, depth=2, eval_n=64, batch_size=32)
    assert canonical_config(method="credit_bridge", **small)["hparams"]["warmup"] == 0.2
    run = store.experiment(method="credit_bridge", epochs=2, results=tmp_path, progress=False, **small)
    loaded = store.load_run(run.path)
    assert (loaded.method.steps_done, loaded.method.warmup_steps) == (16, 3) and not loaded.method.warming_up
    ds = faeval.load_dataset("synthetic", d=12, n_train=256, n_test=64, seed=0)
    xe, ye = ds.eval_batch(64)
    for a, b in zip(run.method.credit(xe, ye), loaded.method.credit(xe, ye)):
        torch.testing.assert_close(a, b)


# -- the penalty ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dfa", "bp"])
def test_penalty_reduces_the_residual_branch(name):
    ds = faeval.load_dataset("synthetic", d=16, n_train=1024, n_test=256, seed=0)

    def branch_norm(lam):
        m = faeval.build_model("resmlp", (16,), 10, seed=0, width=32, depth=3)
        faeval.fit(m, build_method(name, m, penalty=lam), ds, 3, seed=0, progress=False, eval_n=128, batch_size=32)
        hs = m.states(ds.x_test)[0]
        return sum((hs[l + 1] - hs[l]).norm(dim=1).median().item() for l in range(3))

    free, pen = branch_norm(0.0), branch_norm(0.1)
    assert pen < 0.7 * free, (free, pen)          # measured: about 0.5x for both rules


# -- the depth ladder and the frozen baseline -----------------------------------------------
@pytest.mark.parametrize("name", ["bp", "dfa", "fa", "ep"])
def test_trainable_blocks_leaves_the_first_blocks_untouched(name):
    m = _tiny()
    x, y = _xy()
    build_method(name, m, trainable_blocks=1).step(x, y)
    for l, b in enumerate(m.blocks):
        grads = [p.grad for p in b.parameters()]
        if l < m.depth - 1:
            assert all(g is None for g in grads), l
        else:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), l
    assert m.embed.weight.grad is not None and m.out_head.weight.grad is not None


def test_frozen_is_bp_on_embedding_and_readout_only():
    m = _tiny()
    x, y = _xy()
    fr = build_method("frozen", m)
    assert fr.trainable_blocks == 0
    fr.step(x, y)
    assert all(p.grad is None for p in m.blocks.parameters())
    ref = _tiny()
    F.cross_entropy(ref(x), y).backward()
    torch.testing.assert_close(m.embed.weight.grad, ref.embed.weight.grad)


# -- every rule on every architecture where it is defined -----------------------------------
_ARCH_INPUT = {"resmlp": (1, 8, 8), "studentnet": (12,), "vit": (3, 8, 8), "cnn": (3, 8, 8)}


@pytest.mark.parametrize("arch", sorted(_ARCH_INPUT))
@pytest.mark.parametrize("name", ["bp", "frozen", "fa", "dfa", "ep", "state_bridge", "credit_bridge"])
def test_every_rule_steps_on_every_arch_it_supports(name, arch):
    kw = {"width": 16} if arch in ("resmlp", "studentnet", "vit") else {"channels": (4, 8, 8), "hidden": 16}
    m = faeval.build_model(arch, _ARCH_INPUT[arch], 10, seed=0, **kw)
    x, y = _xy(n=16, shape=_ARCH_INPUT[arch], classes=10)
    if name == "fa" and not m.equal_width:          # FA's d x d feedback chain needs equal-width states
        with pytest.raises(UnsupportedArchError, match=f"not defined on arch '{arch}'"):
            build_method(name, m)
        return
    rule = build_method(name, m, hidden=16) if "bridge" in name else build_method(name, m)
    rule.start_training(10)                         # the run's length, as fit tells every rule
    stats = rule.step(x, y)
    assert torch.isfinite(stats["loss"])
    trained = rule.parameters()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    assert all(p.grad is not None for p in rule.aux_parameters())
    credit = rule.credit(x, y)
    hs, _ = m.states(x)
    assert [c.shape for c in credit] == [h.shape for h in hs]


# -- bad input --------------------------------------------------------------------------------
def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown method 'dfx'; valid methods: bp, brsf, credit_bridge, dfa"):
        build_method("dfx", _tiny())


@pytest.mark.parametrize("name,kw,msg", [
    ("ep", {"beta": 0.0}, r"beta=0.0: must be > 0"),
    ("ep", {"beta": -1.0}, r"beta=-1.0: must be > 0"),
    ("dfa", {"penalty": -1e-3}, r"penalty=-0.001: must be >= 0"),
    ("bp", {"penalty": -1.0}, r"penalty=-1.0: must be >= 0"),
    ("credit_bridge", {"K": 0}, r"K=0: must be an integer >= 1"),
    ("dfa", {"trainable_blocks": 4}, r"trainable_blocks=4: must be an integer in \[0, 3\]"),
    ("ep", {"steps": 0}, r"steps=0: must be an integer >= 1"),
    ("credit_bridge", {"ema": 1.0}, r"ema=1.0: must be in \[0, 1\)"),
])
def test_out_of_range_hyperparameters_name_the_range(name, kw, msg):
    with pytest.raises(ValueError, match=msg):
        build_method(name, _tiny(), **kw)


def test_unknown_hyperparameter_lists_the_valid_ones():
    with pytest.raises(TypeError,
                       match=r"unknown hyperparameter\(s\) 'betta'; valid: beta, head_lr, init_aux, penalty"):
        build_method("ep", _tiny(), betta=0.1)


def test_penalty_needs_a_residual_branch():
    cnn = faeval.build_model("cnn", (3, 8, 8), 10, seed=0)
    with pytest.raises(UnsupportedArchError, match="no residual branch"):
        build_method("dfa", cnn, penalty=1e-2)


def test_rules_need_a_layered_model():
    with pytest.raises(TypeError, match="faeval layered models"):
        build_method("dfa", nn.Sequential(nn.Linear(4, 4)))


@pytest.mark.parametrize("name", ["dfa", "fa", "state_bridge", "credit_bridge"])
def test_credit_without_auxiliary_state_raises_and_never_falls_back(name):
    m = _tiny()
    x, y = _xy()
    rule = build_method(name, m, init_aux=False)
    with pytest.raises(MissingAuxStateError, match="not loaded"):
        rule.credit(x, y)
    with pytest.raises(MissingAuxStateError):
        D.gamma_of(rule, m, x, y)
    with pytest.raises(MissingAuxStateError, match="has no"):
        rule.load_aux_state({})


def test_aux_state_of_the_wrong_shape_is_refused():
    dfa = build_method("dfa", _tiny(width=16))
    other = build_method("dfa", _tiny(width=8), init_aux=False)
    with pytest.raises(ValueError, match="shapes"):
        other.load_aux_state(dfa.aux_state())


# -- a rule written in a notebook cell ----------------------------------------------------------
def test_a_user_rule_registers_trains_and_is_audited():
    @register_method("sign_dfa_test")
    class SignDFA(LocalRule):
        """DFA with the sign of the error only (a toy user rule)."""

        def __init__(self, model, *, seed=0, penalty=0.0, trainable_blocks=None, init_aux=True, scale=1.0):
            super().__init__(model, seed=seed, penalty=penalty, trainable_blocks=trainable_blocks,
                             init_aux=init_aux)
            g = torch.Generator().manual_seed(seed)
            self.B = [torch.randn(model.out_head.out_features, 16, generator=g) * scale for _ in range(4)]

        def local_credit(self, states, logits, y, top_grad):
            e = torch.sign(logits.softmax(-1) - F.one_hot(y, logits.shape[-1])) / len(y)
            return [e @ B for B in self.B]

    try:
        m = _tiny()
        rule = build_method("sign_dfa_test", m, scale=0.5)
        ds = faeval.load_dataset("synthetic", d=12, n_train=256, n_test=128, num_classes=5, seed=0)
        run = faeval.fit(m, rule, ds, 1, progress=False, eval_n=128)
        assert len(run.history) == 2 and len(run.final["diag"].gamma) == 4
        rep = faeval.FAProtocol(m, ds.x_test, ds.y_test).run()
        assert rep["verdict"] in ("PASS", "FAIL(D1)", "FAIL(D2)", "FAIL(D1+D2)")
    finally:
        METHODS.pop("sign_dfa_test", None)


def test_the_dfa_shallow_baseline_is_dfa_without_blocks():
    """The audit's DFA-shallow baseline: DFA on the model without residual blocks, where the embedding
    learns from its DFA credit a_0 = e B_0 and the head (after the terminal LN) from the loss."""
    from faeval import build_method, build_model
    from faeval.book.experiments import plan
    from faeval.book.profiles import get_profile

    P = get_profile("smoke")
    cfg = plan("audit", P)["runs"]["shallow", P.seeds[0]]
    assert cfg["method"] == "dfa" and cfg["depth"] == 0
    model = build_model("resmlp", (12,), 5, seed=0, width=16, depth=0)
    rule = build_method("dfa", model, seed=0)
    x, y = torch.randn(32, 12), torch.arange(32) % 5
    loss, _ = rule.loss(x, y)
    loss.backward()
    # the embedding's gradient is that of <h_0, a_0>: a_0 backpropagated through the embedding only
    h0 = model.embed(x)
    a0 = rule.credit(x, y)[0]
    want = torch.autograd.grad((h0 * a0).sum(), model.embed.weight)[0]
    assert torch.allclose(model.embed.weight.grad, want, atol=1e-6)
    assert model.out_head.weight.grad.abs().sum() > 0 and model.depth == 0


@pytest.mark.parametrize("arch", ["resmlp", "vit", "cnn"])
def test_ep_first_relaxation_step_reads_only_the_nudge_with_the_same_numbers(arch):
    """At the free states the energy's gradient is exactly zero, so EP skips that pass through the blocks:
    the update and the credit are bit for bit those of the full first step (a batch-norm model in training
    mode takes the full pass, which also moves its running statistics)."""
    shape = {"resmlp": (12,), "vit": (1, 8, 8), "cnn": (1, 8, 8)}[arch]
    kw = {"cnn": {"channels": (4, 8, 8), "hidden": 16}}.get(arch, {"width": 16})
    out = {}
    for skip in (True, False):
        m = faeval.build_model(arch, shape, 5, seed=0, **kw)
        x, y = _xy(n=32, shape=shape)
        ep = build_method("ep", m, seed=0)
        ep.skip_free_energy = skip
        loss, stats = ep.loss(x, y)
        loss.backward()
        out[skip] = ([p.grad for p in m.parameters()], ep.credit(x, y), stats["relax_ratio"],
                     [b.clone() for b in m.buffers()])
    for a, b in zip(*(out[k][0] + out[k][1] + [out[k][2]] + out[k][3] for k in (True, False))):
        assert torch.equal(a, b)
