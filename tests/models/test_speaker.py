import pytest
import torch

from cmkd_cli.errors import UsageError
from cmkd_cli.models.speaker import AttentiveStatsPool, resnet34_asp
from cmkd_cli.models.taps import FeatureTaps


@pytest.mark.parametrize(
    "width, channels",
    [("quarter", (16, 32, 64, 128)), ("half", (32, 64, 128, 256)), ("full", (64, 128, 256, 512))],
)
def test_width_sets_stage_channels(width, channels):
    net = resnet34_asp(num_classes=None, width=width).backbone
    got = tuple(getattr(net, f"layer{i}")[-1].conv2.out_channels for i in range(1, 5))
    assert got == channels
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


def test_first_conv_and_stage_strides_follow_resnetse34v2():
    net = resnet34_asp(num_classes=None, width="quarter").backbone
    assert net.conv1.stride == (1, 1)
    strides = [getattr(net, f"layer{i}")[0].conv1.stride for i in range(1, 5)]
    assert strides == [(1, 1), (2, 2), (2, 2), (2, 2)]


def test_embedding_logits_and_layer3_tap():
    model = resnet34_asp(num_classes=6, width="quarter").eval()
    taps = FeatureTaps(model, ["backbone.layer3"])
    with torch.no_grad():
        out = model(torch.randn(2, 20, 40))  # [B, T, n_mels]
    assert out.embedding.shape == (2, 512) and out.logits.shape == (2, 6)
    # mel 40 -> 20 -> 10 (two stride-2 stages), time 20 -> 10 -> 5
    assert taps["backbone.layer3"].shape == (2, 64, 10, 5)


def test_time_major_and_image_layout_agree():
    model = resnet34_asp(num_classes=None, width="quarter", n_mels=24).eval()
    x = torch.randn(2, 30, 24)
    with torch.no_grad():
        a = model(x).embedding
        b = model(x.transpose(1, 2).unsqueeze(1)).embedding
    torch.testing.assert_close(a, b)


def test_any_number_of_frames_gives_the_same_embedding_size():
    model = resnet34_asp(num_classes=None, width="quarter", embed_dim=64).eval()
    with torch.no_grad():
        shapes = {model(torch.randn(1, t, 40)).embedding.shape for t in (9, 20, 37)}
    assert shapes == {torch.Size([1, 64])}


def test_asp_is_weighted_mean_and_std_over_time():
    pool = AttentiveStatsPool(dim=3, bottleneck=4).eval()
    torch.nn.init.zeros_(pool.attention[3].weight)
    torch.nn.init.zeros_(pool.attention[3].bias)  # uniform attention over time
    x = torch.randn(2, 3, 11)
    out = pool(x)
    expected = torch.cat([x.mean(2), x.std(2, unbiased=False)], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_asp_ignores_repeating_every_frame():
    pool = AttentiveStatsPool(dim=5).eval()
    x = torch.randn(2, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(pool(x), pool(x.repeat_interleave(3, dim=2)))


def test_bad_input_and_params_name_the_field():
    model = resnet34_asp(num_classes=None, width="quarter")
    with pytest.raises(UsageError, match="n_mels"):
        model(torch.randn(2, 20, 80))
    with pytest.raises(UsageError, match="width"):
        resnet34_asp(num_classes=None, width="double")


def test_partial_tuning_covers_last_stage_pooling_and_heads():
    model = resnet34_asp(num_classes=3, width="quarter")
    top = model.partial_tune_modules()
    bb = model.backbone
    assert top == [bb.layer4, bb.pool, bb.fc, model.head]
    assert model.stage_paths == [f"backbone.layer{i}" for i in range(1, 5)]


def test_stem_bias_as_resnetse34v2():
    """With `stem_bias` the parameter count is ResNetSE34V2's (nOut 512, ASP, 40 mels: 7,044,684,
    counted from clovaai/voxceleb_trainer f51bab8); without it 32 fewer (old checkpoints)."""
    ref = resnet34_asp(num_classes=None, width="half", stem_bias=True).backbone
    assert ref.conv1.bias is not None and ref.conv1.bias.shape == (32,)
    assert sum(p.numel() for p in ref.parameters()) == 7_044_684
    old = resnet34_asp(num_classes=None, width="half")
    assert old.backbone.conv1.bias is None
    assert sum(p.numel() for p in old.backbone.parameters()) == 7_044_684 - 32


def test_stem_bias_is_not_absorbed_by_the_batch_norm():
    """conv -> ReLU -> BN: in training (batch statistics) the BN would cancel a bias added
    right before it, but the ReLU in between sees the bias, so the stem output changes."""
    torch.manual_seed(0)
    net = resnet34_asp(num_classes=None, width="quarter", stem_bias=True).backbone.train()
    x = net.to_image(torch.randn(2, 30, 40))

    def stem() -> torch.Tensor:
        return net.bn1(net.relu(net.conv1(x)))

    with torch.no_grad():
        net.conv1.bias.zero_()
        before = stem()
        net.conv1.bias.fill_(0.5)
        after = stem()
        absorbed = net.bn1(net.conv1(x)) - net.bn1(net.conv1(x) - 0.5)  # BN right after conv
    assert (after - before).abs().max() > 0.1
    assert absorbed.abs().max() < 1e-4


def test_checkpoint_without_stem_bias_loads_into_the_default_model():
    saved = resnet34_asp(num_classes=4, width="quarter").state_dict()
    assert "backbone.conv1.bias" not in saved
    resnet34_asp(num_classes=4, width="quarter").load_state_dict(saved)  # strict
    with pytest.raises(RuntimeError, match="conv1.bias"):
        resnet34_asp(num_classes=4, width="quarter", stem_bias=True).load_state_dict(saved)
