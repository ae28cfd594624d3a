"""The prefix table prefix-affinity routing reads, and the cluster's configuration file."""

from __future__ import annotations

import pytest

from pollama.cluster.affinity import BLOCK, PrefixTable, block_names
from pollama.cluster.config import ClusterConfig, ConfigError

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def chat(*turns: str) -> str:
    return SYSTEM + "".join(f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n" for t in turns)


def test_block_names_chain_the_whole_prefix():
    a, b = "x" * BLOCK + "y" * BLOCK, "z" * BLOCK + "y" * BLOCK
    assert len(block_names(a)) == 2 and len(block_names(a + "tail")) == 2
    assert block_names(a)[1] != block_names(b)[1]  # same second block, other first: another name


def test_a_conversation_prefers_its_replica_and_a_shared_start_does_not():
    table = PrefixTable()
    first = chat("My name is Ann. Tell me a story about a cat.")
    table.record(first + "Once upon a time, a cat named Whiskers lived in a small town.", "r1")
    later = chat("My name is Ann. Tell me a story about a cat.") + "Once upon a time, a cat named Whiskers lived " \
        "in a small town.<|im_end|>\n<|im_start|>user\nMake it shorter.<|im_end|>\n<|im_start|>assistant\n"
    assert table.preferred(later) == "r1"
    # Another conversation shares the system prompt only: under MIN_SHARE, no preference.
    other = chat("My name is Bob. Tell me a story about a ship.")
    replica, matched = table.match(other)
    assert replica == "r1" and 0 < matched < len(other) / 2 and table.preferred(other) is None
    table.forget("r1")
    assert table.match(later) == (None, 0)


def test_the_table_keeps_the_most_recent_blocks():
    table = PrefixTable(max_blocks=4)
    table.record("a" * BLOCK * 3, "r1")
    table.record("b" * BLOCK * 4, "r2")
    assert table.match("b" * BLOCK * 4) == ("r2", 4 * BLOCK)
    assert table.match("a" * BLOCK * 3) == (None, 0)  # its blocks were the oldest


def test_config_gives_fixed_or_autoscaled_replicas():
    config = ClusterConfig.from_dict({"keep_alive": "10m", "models": [
        {"name": "smollm2", "replicas": 2, "num_parallel": 4},
        {"name": "qwen", "min_replicas": 0, "max_replicas": 3, "num_parallel": 2, "num_cpus": 2}]})
    fixed, scaled = (m.deployment_options(config.keep_alive) for m in config.models)
    assert fixed == {"max_ongoing_requests": 4, "ray_actor_options": {"num_cpus": 1.0}, "num_replicas": 2}
    assert scaled["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 3, "initial_replicas": 1,
                                            "target_ongoing_requests": 2, "downscale_delay_s": 600.0}


@pytest.mark.parametrize(("data", "message"), [
    ({}, "no \\[\\[models\\]\\]"),
    ({"models": [{"name": "a", "replicas": 0}]}, "replicas must be an integer of at least 1"),
    ({"models": [{"name": "a", "replicas": 2, "max_replicas": 3}]}, "not both"),
    ({"models": [{"name": "a", "min_replicas": 3, "max_replicas": 2}]}, "min_replicas is above"),
    ({"models": [{"name": "a", "replica": 2}]}, "unknown key 'replica'"),
    ({"models": [{"name": "a"}, {"name": "a"}]}, "listed twice"),
    ({"models": [{"name": "a"}], "keep_alive": "soon"}, "keep_alive"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        ClusterConfig.from_dict(data)


def test_config_file(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text('store = "/srv/models"\n[[models]]\nname = "smollm2"\nreplicas = 2\n')
    config = ClusterConfig.load(path)
    assert config.store == "/srv/models" and config.models[0].replicas == 2
    path.write_text("[[models]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ClusterConfig.load(path)


def test_serve_ray_needs_a_good_config(tmp_path):
    import subprocess
    import sys

    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pollama.cli.main", "serve", *args], capture_output=True,
                              text=True, timeout=60)

    assert "needs --config FILE" in serve("--ray").stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[[models]]\nname = 'smollm2'\nreplicas = 0\n")
    result = serve("--ray", "--config", str(bad))
    assert result.returncode == 1 and f"{bad}: models[0]: replicas must be an integer of at least 1" in result.stderr
    result = serve("--config", str(bad))
    assert result.returncode != 0 and "use it with --ray" in result.stderr
