"""The four architectures: shapes, the layered interface, SPEC 1.1 init facts, bad input."""
import pytest
import torch

from faeval.models import ARCHS, build_model

SHAPES = {"fashion": (1, 28, 28), "cifar": (3, 32, 32), "synthetic": (128,)}
IMAGE_ONLY = {"vit", "cnn", "resnet"}


def _cases():
    for arch in sorted(ARCHS):
        for name, shape in SHAPES.items():
            yield arch, name, shape


@pytest.mark.parametrize("arch,name,shape", list(_cases()))
def test_every_arch_runs_states_on_every_dataset_shape(arch, name, shape):
    if arch in IMAGE_ONLY and len(shape) == 1:
        with pytest.raises(ValueError, match="needs image inputs"):
            build_model(arch, shape, 10)
        return
    model = build_model(arch, shape, 10, seed=0)
    x = torch.randn(6, *shape)
    hs, logits = model.states(x)
    assert logits.shape == (6, 10)
    assert len(hs) == model.depth + 1
    for h in hs:
        v = model.reduce_state(h)
        assert v.shape[0] == 6 and v.dim() == 2
    # forward and run_from agree with states()
    assert torch.allclose(model(x), logits)
    for l in range(model.depth + 1):
        assert torch.allclose(model.run_from(l, hs[l]), logits, atol=1e-5)


def test_layered_skeleton_per_arch():
    m = build_model("resmlp", (1, 28, 28), 10)
    assert m.residual and m.has_out_ln and m.depth == 4 and m.width == 256
    assert [n for n, _ in m.named_children()] == ["embed", "blocks", "out_ln", "out_head"]
    assert not build_model("resmlp", (1, 28, 28), 10, out_ln=False).has_out_ln
    vit = build_model("vit", (3, 32, 32), 10)
    assert vit.residual and vit.has_out_ln and vit.width == 128 and vit.depth == 4 and vit.patch == 4
    hs, _ = vit.states(torch.randn(2, 3, 32, 32))
    assert hs[0].shape == (2, 65, 128)                                # 64 patches + cls
    assert torch.equal(vit.reduce_state(hs[2]), hs[2][:, 0])          # diagnostics read the cls token
    cnn = build_model("cnn", (3, 32, 32), 10)
    assert not cnn.residual and not cnn.has_out_ln and cnn.depth == 3
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in cnn.modules())
    assert not any(isinstance(mod, torch.nn.BatchNorm2d)
                   for mod in build_model("cnn", (3, 32, 32), 10, batchnorm=False).modules())
    hs, _ = cnn.states(torch.randn(2, 3, 32, 32))
    assert hs[1].shape == (2, 64, 16, 16)
    assert torch.allclose(cnn.reduce_state(hs[1]), hs[1].mean(dim=(2, 3)))  # channel means
    st = build_model("studentnet", (128,), 10)
    assert st.residual and not st.has_out_ln and st.width == 128 and st.depth == 4


def test_resmlp_block_matches_spec():
    m = build_model("resmlp", (3, 32, 32), 10, seed=42)
    blk = m.blocks[0]
    assert blk.w1.weight.shape == (256, 256) and blk.w2.weight.shape == (256, 256)   # d -> d -> d
    assert isinstance(blk.act, torch.nn.GELU)
    assert abs(blk.w2.weight.std().item() - 0.01) < 5e-4
    assert torch.count_nonzero(blk.w2.bias) == 0
    h = torch.randn(3, 256)
    F = torch.nn.functional
    expect = blk.w2(F.gelu(blk.w1(F.layer_norm(h, (256,), blk.ln.weight, blk.ln.bias))))
    assert torch.allclose(blk(h), expect)
    assert torch.allclose(m.block_forward(0, h), h + expect)           # skip added by the model
    plain = build_model("resmlp", (3, 32, 32), 10, residual=False, seed=42)
    assert torch.allclose(plain.block_forward(0, h), plain.blocks[0](h))


@pytest.mark.parametrize("seed", [42, 123, 456])
def test_resmlp_init_facts(seed):
    """SPEC 1.1 at init: per-block ||f||/||h|| ~ 0.1, cos(h_L, h_0) ~ 0.98, ||h|| ~ 9."""
    # data from a different stream than the weights: the same seed would correlate x with W_embed
    g = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(256, 3, 32, 32, generator=g)          # standardised inputs
    m = build_model("resmlp", (3, 32, 32), 10, seed=seed).eval()
    with torch.no_grad():
        hs, _ = m.states(x)
        ratios = [(m.blocks[l](hs[l]).norm(dim=-1) / hs[l].norm(dim=-1)).median().item() for l in range(4)]
        cos = torch.nn.functional.cosine_similarity(hs[-1], hs[0], dim=-1).median().item()
        h0 = hs[0].norm(dim=-1).median().item()
    for r in ratios:
        assert 0.07 < r < 0.13, ratios
    assert 0.96 < cos < 0.995, cos
    assert 7.5 < h0 < 10.5, h0


def test_same_seed_same_weights_and_rng_untouched():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = build_model("resmlp", (1, 28, 28), 10, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after), "build_model(seed=...) must not consume the global RNG"
    b = build_model("resmlp", (1, 28, 28), 10, seed=7)
    c = build_model("resmlp", (1, 28, 28), 10, seed=8)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_bad_input():
    with pytest.raises(ValueError, match="valid archs: cnn, resmlp, resnet, studentnet, vit"):
        build_model("resnet50", (1, 28, 28), 10)
    with pytest.raises(ValueError, match=r"needs image inputs of shape \(channels, height, width\)"):
        build_model("cnn", (784,), 10)
    with pytest.raises(ValueError, match="at least 4x4"):
        build_model("cnn", (1, 3, 3), 10)
    with pytest.raises(TypeError, match="build_model\\('resmlp'\\)"):
        build_model("resmlp", (1, 28, 28), 10, widht=3)
    with pytest.raises(ValueError, match="alpha"):
        build_model("studentnet", (128,), 10, alpha=2.0)


def test_small_resnet_is_a_residual_bn_net_that_every_rule_but_fa_trains():
    """SmallResNet: stem conv (stride 2) + BN + ReLU, identity-skip basic blocks, average pool, head."""
    from faeval.methods import UnsupportedArchError, build_method

    m = build_model("resnet", (3, 32, 32), 10, seed=0, channels=8, depth=3)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    hs, logits = m.states(x)
    assert [tuple(h.shape[1:]) for h in hs] == [(8, 16, 16)] * 4 and m.residual and not m.has_out_ln
    assert torch.allclose(hs[1], hs[0] + m.blocks[0](hs[0]))            # h_{l+1} = h_l + f_l(h_l)
    assert any(isinstance(l, torch.nn.BatchNorm2d) for l in m.blocks[0])
    assert torch.allclose(logits, m.out_head(hs[-1].mean(dim=(2, 3))))
    for name, hp in [("bp", {}), ("dfa", {}), ("ep", {}), ("state_bridge", {}), ("credit_bridge", {}),
                     ("dfa", {"penalty": 1e-2})]:
        rule = build_method(name, m, seed=0, **hp)
        rule.start_training(10)                         # the run's length, as fit tells every rule
        before = [p.detach().clone() for p in m.blocks[1].parameters()]
        m.zero_grad()
        loss, _ = rule.loss(x, y)
        loss.backward()
        assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0
                                            for p in m.blocks[1].parameters()), name
        assert all(torch.equal(a, b) for a, b in zip(before, m.blocks[1].parameters()))
    with pytest.raises(UnsupportedArchError, match="feature maps.*use dfa instead"):
        build_method("fa", m)
