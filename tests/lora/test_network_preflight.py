"""``--network_args`` mistakes a network type can see are reported before any model loads."""

from __future__ import annotations

import pytest

from tuner_core import ConfigError

from ..engine.conftest import make_workspace
from ..engine.helpers import cache_all, run, train_values


@pytest.fixture
def toy(tmp_path):
    return make_workspace(tmp_path / "toy")


def test_an_unknown_lycoris_algorithm_is_refused_before_the_model_loads(toy, tmp_path):
    pytest.importorskip("lycoris")
    cache_all(toy)
    values = train_values(toy, tmp_path, network_module="lycoris.kohya", network_args=["algo=lohaa"])
    values["dit"] = tmp_path / "not-a-model.safetensors"  # any load would fail with another error
    values["dit"].write_text("no")
    with pytest.raises(ConfigError, match=r"algo='lohaa' is not a LyCORIS algorithm; choose one of .*loha"):
        run("train", values)


def test_a_network_arg_that_is_not_key_value_names_network_args(toy, tmp_path):
    cache_all(toy)
    values = train_values(toy, tmp_path, network_args=["rank_dropout"])
    with pytest.raises(ConfigError, match=r"--network_args: 'rank_dropout' is not key=value"):
        run("train", values)
