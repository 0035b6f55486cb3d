"""The model-family contract (lightpipe/models/base.py): a family registers a Family record,
its classes derive from Model and get documented defaults for every hook loading and
generation call, its Config reads config.json through ModelConfig. A family that leaves a hook
out loads with the defaults; one registered wrongly fails at once with an error saying what is
wrong, not with an AttributeError halfway through loading."""

from __future__ import annotations

import importlib
import json
import sys
import types
import warnings
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lightpipe import loading
from lightpipe.generation import generate
from lightpipe.models.base import Family, Model, ModelConfig

pytestmark = pytest.mark.unit


# -- a toy family: the least a family can be (a Config, a class with a forward, a record) ---------


@dataclass
class ToyConfig(ModelConfig):
    vocab_size: int = 10
    hidden_size: int = 4
    num_labels: int = 2


class ToyModel(Model):  # no hook defined: every one takes the base's default
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)

    def forward(self, input_ids):
        return self.embed(input_ids)  # (B, T, C)


class ToyClassifier(Model):
    base_model_prefix = "toy"

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.toy = ToyModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids):
        return self.classifier(self.toy(input_ids)[:, 0])


TOY_HEADS = {"base": ToyModel, "sequence-classification": ToyClassifier}


def register(monkeypatch, **module_attributes) -> None:
    """Register model_type "toy" as lightpipe.models.toy, a module with `module_attributes`."""
    module = types.ModuleType("lightpipe.models.toy")
    vars(module).update(module_attributes)
    monkeypatch.setitem(sys.modules, "lightpipe.models.toy", module)
    monkeypatch.setitem(loading.FAMILIES, "toy", "toy")


def toy_checkpoint(folder, state: dict, **config) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "toy", "vocab_size": 10, "hidden_size": 4, **config}))
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    return str(folder)


def test_a_family_without_hooks_loads_with_the_documented_defaults(monkeypatch, tmp_path):
    register(monkeypatch, FAMILIES=(Family(("toy",), ToyConfig, TOY_HEADS),))  # no sanitize either
    weights = {"embed.weight": torch.randn(10, 4)}
    model, config = loading.load_model(toy_checkpoint(tmp_path / "base", weights), dtype="bfloat16")
    assert type(model) is ToyModel and config["model_type"] == "toy"
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.embed.weight.dtype == torch.bfloat16
    torch.testing.assert_close(model.embed.weight, weights["embed.weight"].bfloat16())
    assert (model.base_model_prefix, model.ignore_unexpected, tuple(model.tied_weights)) == ("", (), ())
    assert (model.is_encoder_decoder, model.max_positions, model.context_length) == (False, None, None)

    # the prefix default on the base, a declared one on the head: a base checkpoint loads under the
    # head's "toy." prefix and only the head is fresh (with transformers' warning)
    with pytest.warns(UserWarning, match=r"newly initialized: \['classifier.bias', 'classifier.weight'\]"):
        head, _ = loading.load_model(tmp_path / "base", "sequence-classification")
    torch.testing.assert_close(head.toy.embed.weight, weights["embed.weight"])
    # and a missing base weight is still an error, not a fresh init
    empty = toy_checkpoint(tmp_path / "empty", {"classifier.weight": torch.zeros(2, 4)},
                           architectures=["ToyForSequenceClassification"])
    with pytest.raises(ValueError, match="lacks weights the model needs: \\['toy.embed.weight'\\]"):
        loading.load_model(empty)


def test_a_model_that_cannot_generate_says_so(monkeypatch, tmp_path):
    register(monkeypatch, FAMILIES=(Family(("toy",), ToyConfig, TOY_HEADS),))
    model, _ = loading.load_model(toy_checkpoint(tmp_path, {"embed.weight": torch.randn(10, 4)}))
    with pytest.raises(TypeError, match="ToyModel can't generate text: .*'causal-lm' or 'seq2seq-lm' head"):
        generate(model, torch.tensor([[1, 2]]), max_new_tokens=2)
    with pytest.raises(TypeError, match=r"`model` must be a lightpipe model .*got Linear"):
        generate(nn.Linear(2, 2), torch.tensor([[1, 2]]), max_new_tokens=2)


def test_a_family_module_without_a_record_is_named(monkeypatch):
    register(monkeypatch, HEADS=TOY_HEADS, Config=ToyConfig)  # the pre-contract exports: no FAMILIES
    with pytest.raises(TypeError, match="lightpipe.models.toy is registered for model_type 'toy' but has no Family"):
        loading.family({"model_type": "toy"})
    register(monkeypatch, FAMILIES=(Family(("other",), ToyConfig, TOY_HEADS),))  # records, none for "toy"
    with pytest.raises(TypeError, match="no Family record for it"):
        loading.family({"model_type": "toy"})


@pytest.mark.parametrize("record, message", [
    (dict(model_types="toy"), "model_types must be a non-empty tuple"),
    (dict(model_types=()), "model_types must be a non-empty tuple"),
    (dict(config=dict), "config must be a ModelConfig subclass"),
    (dict(heads={}), "has no heads"),
    (dict(heads={"base": nn.Linear}), "head 'base' must be a lightpipe.models.base.Model subclass"),
    (dict(heads={"classifier": ToyClassifier}), "unknown head name 'classifier'"),
    (dict(sanitize="drop"), "sanitize must be a function"),
])
def test_a_wrong_record_fails_where_it_is_written(record, message):
    fields = dict(model_types=("toy",), config=ToyConfig, heads=TOY_HEADS) | record
    with pytest.raises(TypeError, match=message):
        Family(**fields)


def test_every_registered_model_type_has_its_record_and_every_record_is_registered():
    for model_type, module in loading.FAMILIES.items():
        assert model_type in loading.family({"model_type": model_type}).model_types
    for module in set(loading.FAMILIES.values()):
        for record in importlib.import_module(f"lightpipe.models.{module}").FAMILIES:
            assert all(loading.FAMILIES.get(t) == module for t in record.model_types), record.model_types


# -- the config base ------------------------------------------------------------------------------


@dataclass
class Derived(ModelConfig):
    hidden_size: int = 8
    num_attention_heads: int = 2
    head_dim: int | None = None
    num_labels: int = 2

    def __post_init__(self):
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads


@dataclass
class KeepsNulls(Derived):
    null_means_default = False
    start: int | None = 5


def test_config_keeps_declared_keys_and_derives_in_post_init():
    config = Derived.from_dict({"hidden_size": 12, "vocab_size": 99, "architectures": ["X"], "head_dim": None})
    assert (config.hidden_size, config.head_dim) == (12, 6) and not hasattr(config, "vocab_size")
    assert Derived(hidden_size=20).head_dim == 10  # built by hand: derived the same way
    assert Derived.from_dict({"id2label": {"0": "a", "1": "b", "2": "c"}, "num_labels": 2}).num_labels == 3
    assert Derived.from_dict({"num_labels": 4}).num_labels == 4


def test_a_null_means_the_default_unless_the_family_keeps_it():
    assert Derived.from_dict({"hidden_size": None}).hidden_size == 8
    assert KeepsNulls.from_dict({"start": None}).start is None
    assert KeepsNulls.from_dict({}).start == 5


def test_quantize_leaves_a_plain_module_alone_and_unties_a_family_model():
    from lightpipe.quantize import Int8Linear, quantize_int8

    plain = quantize_int8(nn.Sequential(nn.Linear(8, 8)))
    assert isinstance(plain[0], Int8Linear) and "tied_weights" not in vars(plain)

    model = ToyClassifier(ToyConfig(hidden_size=8))
    model.tied_weights = ["classifier.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_int8(model)
    assert isinstance(model.classifier, Int8Linear) and list(model.tied_weights) == []
