"""`state_backend` and `node` in the config, and a lone node's answers (no Redis involved)."""

from __future__ import annotations

import pytest

from edgeproxy.config import parse_config
from edgeproxy.errors import ConfigError
from switchctl.client import ControlClient
from tests.proxy_fixtures import site


def problems(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    return "\n".join(e.value.problems)


def test_state_backend_is_absent_by_default_and_takes_a_redis_url() -> None:
    assert parse_config("{}").state_backend is None
    config = parse_config("state_backend: redis://10.0.0.2:6379/3\nnode: {id: edge-1}\n")
    assert config.state_backend == "redis://10.0.0.2:6379/3"
    assert (config.node.id, config.node.heartbeat_seconds) == ("edge-1", 1.0)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://10.0.0.2:6379/0", "only redis:// is supported"),
        ("redis://10.0.0.2/0", "needs a host and a port"),
        ("redis://10.0.0.2:port/0", "the port is not a number"),
        ("redis://10.0.0.2:6379/shop", "the database 'shop' is not a number"),
        ("redis://10.0.0.2:6379/0?password=x", "no query or fragment is read"),
    ],
)
def test_a_state_backend_that_is_not_redis_host_port_db_is_refused_saying_how_to_write_it(
    url: str, says: str
) -> None:
    text = problems(f"state_backend: '{url}'\n")
    assert "state_backend" in text and says in text
    assert "write it as redis://HOST:PORT/DB" in text


def test_a_node_id_with_spaces_is_refused() -> None:
    assert "is not a node id" in problems("node: {id: 'edge one'}\n")


def test_a_lone_node_answers_the_cluster_view_with_no_backend_and_no_store_metrics(backend, edge):
    e = edge({"apps": {"shop": {"colors": {"blue": {"upstreams": [backend("blue").url]}}}},
              "sites": [site("shop")]})  # fmt: skip
    client = ControlClient(e.socket_path)
    assert client.cluster() == {"backend": None}
    assert "edgeproxy_state_backend" not in client.metrics()
