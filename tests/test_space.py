from __future__ import annotations

import numpy as np
import pytest

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.space import REFERENCE_ARCHS, SearchSpace, StudentArch


def test_arch_string_round_trip():
    arch = StudentArch.parse("L4-H312-A12-I1200")
    assert arch == StudentArch(4, 312, 12, 1200)
    assert str(arch) == "L4-H312-A12-I1200"
    assert arch.head_size == 26
    assert StudentArch.parse(" l2-h64-a2-i128 ") == StudentArch(2, 64, 2, 128)


@pytest.mark.parametrize(
    "text, words",
    [
        ("L4-H256-A4", "expected L{layers}"),
        ("4-256-4-1024", "expected L{layers}"),
        ("L4-H250-A4-I1024", "not divisible by 4 heads"),
        ("L0-H256-A4-I1024", "at least one layer"),
        ("L4-H256-A0-I1024", "must be positive"),
    ],
)
def test_bad_arch_strings_say_why(text, words):
    with pytest.raises(KdnasError, match=r".*") as err:
        StudentArch.parse(text)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_parameter_count_matches_transformers():
    from transformers import BertConfig, BertForSequenceClassification

    arch = StudentArch(2, 64, 4, 96)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, num_labels=3)
    model = BertForSequenceClassification(cfg)
    assert arch.parameter_count(num_labels=3) == sum(p.numel() for p in model.parameters())


def test_default_space_is_bert_base_sized_and_valid():
    space = SearchSpace.default()
    assert space.layers == tuple(range(1, 13))
    assert space.hidden == (128, 192, 256, 384, 512, 768)
    assert max(space.heads) == 12
    assert len(space.blocks()) == 24 * 15  # 24 (width, heads) pairs, 15 FFN sizes each
    assert len(space) == 12 * 24 * 15
    for h, a, i in space.blocks():
        assert h % a == 0 and h // a >= space.min_head_size
        assert 4 * i % h == 0 and 0.5 <= i / h <= 4
    # Steps of FFN size at the widths where small students live: 96 at 384, 64 at 256.
    assert sorted({i for h, _, i in space.blocks() if h == 384})[:3] == [192, 288, 384]
    assert sorted({i for h, _, i in space.blocks() if h == 256})[:3] == [128, 192, 256]
    # BERT-base itself and MiniLM-L6 are candidates; TinyBERT-4 (312 wide) is not, and says why.
    assert REFERENCE_ARCHS[0] in space and REFERENCE_ARCHS[1] in space
    assert "hidden size 312" in space.why_not(REFERENCE_ARCHS[2])


def test_invalid_combinations_are_excluded_by_construction():
    space = SearchSpace(layers=(1, 2), hidden=(96, 128), heads=(3, 4, 8), ffn_ratios=(2,), min_head_size=16)
    # 128 / 3 is not whole, 96 / 8 = 12 < 16: neither becomes a block.
    assert set(space.blocks()) == {(96, 3, 192), (96, 4, 192), (128, 4, 256), (128, 8, 256)}
    with pytest.raises(KdnasError, match="head size 12 is below the floor of 16"):
        space.check(StudentArch(1, 96, 8, 192))
    with pytest.raises(KdnasError, match="FFN size 200"):
        space.check(StudentArch(1, 128, 4, 200))
    with pytest.raises(KdnasError, match="3 layers is not among"):
        space.check(StudentArch(3, 128, 4, 256))


def test_space_from_teacher_config_minilm_shape():
    from transformers import BertConfig

    space = SearchSpace.from_teacher_config(BertConfig(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536))
    assert space.layers == (1, 2, 3, 4, 5, 6)
    assert max(space.hidden) == 384 and min(space.hidden) >= 64
    assert StudentArch(6, 384, 12, 1536) in space


def test_enumerate_sample_and_count_agree():
    space = SearchSpace.default()
    all_archs = space.enumerate()
    assert len(all_archs) == len(space) == len(set(all_archs))
    a = space.sample(50, 7)
    assert a == space.sample(50, 7)  # seeded
    assert len(set(a)) == 50 and all(x in space for x in a)
    assert len(space.sample(10_000, 0)) == len(space)  # unique sampling caps at the space size
    assert len(space.sample(3000, 0, unique=False)) == 3000


def test_encode_is_bounded_and_monotone_in_depth():
    space = SearchSpace.default()
    feats = space.encode(space.enumerate())
    assert feats.shape == (len(space), len(SearchSpace.feature_names))
    assert feats.min() >= -1e-9 and feats.max() <= 1 + 1e-9
    shallow = space.encode(StudentArch(1, 256, 4, 1024))
    deep = space.encode(StudentArch(8, 256, 4, 1024))
    assert deep[0] > shallow[0] and deep[4] > shallow[4]
    assert np.allclose(shallow[1:4], deep[1:4])
    # Outside the space still encodes (a hand-crafted baseline is scored by the same predictor).
    assert space.encode(REFERENCE_ARCHS[2]).shape == (5,)


def test_space_toml_round_trip_and_errors(tmp_path):
    good = tmp_path / "s.toml"
    good.write_text('[space]\nlayers = [1, 2, 3]\nhidden = [128, 256]\nheads = [2, 4]\nffn_ratios = [2, 4]\n')
    space = SearchSpace.from_toml(good)
    assert len(space) == 3 * 2 * 2 * 2
    assert SearchSpace.from_dict(space.to_dict()) == space

    cases = {
        "layers = [1]\nhidden = [128]\nheads = [2]\n": "missing key 'ffn_ratios'",
        "layers = [1]\nhidden = [128]\nheads = [2]\nffn_ratios = [2]\nwidth = 3\n": "unknown key 'width'",
        "layers = [0]\nhidden = [128]\nheads = [2]\nffn_ratios = [2]\n": "layers holds 0",
        "layers = [1]\nhidden = [100]\nheads = [3]\nffn_ratios = [2]\n": "search space is empty",
        "layers = 'x'\nhidden = [128]\nheads = [2]\nffn_ratios = [2]\n": "layers must be a non-empty list",
        "layers = [1,\n": "not valid TOML",
    }
    for text, words in cases.items():
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(KdnasError) as err:
            SearchSpace.from_toml(bad)
        assert words in str(err.value), (text, str(err.value))
    with pytest.raises(KdnasError, match="no such file"):
        SearchSpace.from_toml(tmp_path / "nope.toml")
