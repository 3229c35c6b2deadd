"""Settings: where a process listens versus where it finds the others."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from streamcart.settings import DEVELOPMENT_JWT_SECRET, Settings


def test_on_one_machine_everything_is_found_on_host_and_workers_take_consecutive_ports():
    settings = Settings(host="127.0.0.1", api_port=8080)
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.jdbc_url == "jdbc:postgresql://127.0.0.1:5433/warehouse"
    assert [settings.worker_url(i) for i in (0, 1)] == ["http://127.0.0.1:8080", "http://127.0.0.1:8081"]


def test_in_containers_each_service_has_its_own_host_and_every_worker_the_same_port():
    settings = Settings(host="0.0.0.0", kafka_host="kafka", registry_host="registry", connect_host="connect",
                        postgres_host="postgres", postgres_port=5432, gateway_host="gateway",
                        advertised_host="worker-{index}", api_port_per_worker=False)
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.registry_url == "http://registry:8085/apis/ccompat/v7"
    assert settings.connect_url == "http://connect:8083"
    assert settings.gateway_url == "http://gateway:8090"
    assert "@postgres:5432/" in settings.postgres_dsn
    assert settings.worker_port(1) == 8080 and settings.worker_url(1) == "http://worker-1:8080"
    assert settings.worker_url(0) == "http://worker-0:8080"


def test_workers_with_an_address_each_must_be_named_by_index_or_they_could_not_reach_each_other():
    with pytest.raises(ValidationError, match=r"STREAMCART_ADVERTISED_HOST must name each worker by its index"):
        Settings(api_port_per_worker=False, advertised_host="worker-0")
    assert Settings(api_port_per_worker=False, advertised_host="worker-0", workers=1).worker_url(0) == \
        "http://worker-0:8080"


def test_unset_hosts_are_not_passed_to_children_as_text():
    env = Settings().to_env()
    assert "STREAMCART_KAFKA_HOST" not in env
    assert Settings(**{k.removeprefix("STREAMCART_").lower(): v for k, v in env.items()}) == Settings()


def test_a_worker_port_that_is_another_process_port_is_refused_with_the_way_out():
    with pytest.raises(ValidationError, match="worker 3's API port would be 8083, which is connect_port"):
        Settings(workers=4)
    assert Settings(workers=4, api_port=8180).worker_port(3) == 8183
    assert Settings(workers=4, api_port_per_worker=False,
                    advertised_host="w{index}").worker_port(3) == 8080  # a host of its own each


@pytest.mark.parametrize(
    ("host", "secret", "exposed"),
    [
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
        ("0.0.0.0", None, True),
        ("10.1.2.3", None, True),
        ("worker-0", None, True),  # a name may resolve to anything
        ("0.0.0.0", "a-secret-of-our-own-at-least-32-bytes", False),
    ],
)
def test_an_api_beyond_loopback_signing_with_the_development_secret_is_called_out(host, secret, exposed):
    settings = Settings(host=host, jwt_secret=secret or DEVELOPMENT_JWT_SECRET)  # whatever the environment says
    assert settings.exposed_with_development_secret() is exposed


def test_orders_must_be_kept_at_least_as_long_as_an_idempotency_key_names_them():
    with pytest.raises(ValidationError, match="STREAMCART_ORDER_RETENTION_S=3600 is shorter than"):
        Settings(order_retention_s=3600, idempotency_ttl_s=7200)
    assert Settings(order_retention_s=7200, idempotency_ttl_s=7200).order_retention_s == 7200
    assert Settings(order_retention_s=0, idempotency_ttl_s=7200).order_retention_s == 0  # kept for ever
    assert Settings().order_retention_s == 7 * 24 * 3600


def test_standby_copies_are_at_most_one_fewer_than_the_workers():
    with pytest.raises(ValidationError, match="STREAMCART_STANDBY_REPLICAS=2 with STREAMCART_WORKERS=2"):
        Settings(standby_replicas=2, workers=2)
    assert Settings(standby_replicas=2, workers=3).standby_replicas == 2


def test_heartbeats_come_at_least_three_times_a_session():
    """A worker writes only within 70% of a session after its last heartbeat (agents/transport.py, Lease)."""
    with pytest.raises(ValidationError, match="STREAMCART_BROKER_HEARTBEAT_INTERVAL_S=4 is more than a third"):
        Settings(broker_heartbeat_interval_s=4, broker_session_timeout_s=10)
    assert Settings(broker_heartbeat_interval_s=3, broker_session_timeout_s=9).broker_heartbeat_interval_s == 3


def test_the_stacks_folders_default_to_the_checkout_whatever_the_current_folder(tmp_path, monkeypatch):
    """``streamcart status`` from ``tests/`` said every process was down (and ``up`` there would have set up an
    empty stack beside the running one): the defaults are the checkout's folders; a relative value one sets is
    still the current folder's."""
    checkout = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    assert (Settings().home, Settings().cache_dir) == (checkout / ".streamcart", checkout / ".cache")
    assert Settings(home=Path("elsewhere")).home.resolve() == tmp_path / "elsewhere"


def test_a_variable_that_names_no_setting_is_called_out_with_the_one_it_may_mean():
    """A misspelt STREAMCART_WORKRES=4 was ignored without a word: the stack started with 2 workers."""
    from streamcart.settings import unknown_variables

    environ = {"STREAMCART_WORKRES": "4", "STREAMCART_FOO": "1", "STREAMCART_WORKERS": "2", "PATH": "/bin",
               "STREAMCART_TEST_PORT_OFFSET": "100", "STREAMCART_API_SERVICE_HOST": "10.0.0.7",  # Kubernetes'
               "STREAMCART_GATEWAY_PORT_8090_TCP_ADDR": "10.0.0.8"}
    assert unknown_variables(environ) == [
        "STREAMCART_FOO is no setting; it is ignored",
        "STREAMCART_WORKRES is no setting (did you mean STREAMCART_WORKERS?); it is ignored",
    ]


def test_topics_get_the_brokers_default_replicas_unless_a_number_is_set_and_faust_follows_a_number():
    from agents.app import create_faust_app

    assert Settings().topic_replication_factor == -1
    assert create_faust_app(Settings(), store="memory://").conf.topic_replication_factor == 1  # faust's: no -1
    three = Settings(topic_replication_factor=3)
    assert create_faust_app(three, store="memory://").conf.topic_replication_factor == 3
    with pytest.raises(ValidationError, match="at least one replica"):
        Settings(topic_replication_factor=0)


@pytest.mark.parametrize("variable", ["saga_timeout_s", "timer_interval_s", "commit_interval_s",
                                      "gateway_attempt_timeout_s", "broker_session_timeout_s",
                                      "broker_heartbeat_interval_s", "order_retention_s", "rate_limit_per_s"])
@pytest.mark.parametrize("value", ["nan", "inf", "-5"])
def test_a_duration_or_rate_that_is_no_finite_positive_number_is_refused(monkeypatch, variable, value):
    """`dlq replay` crashed on a retention of inf and a timeout of nan; a negative saga timeout was taken."""
    monkeypatch.setenv(f"STREAMCART_{variable.upper()}", value)
    with pytest.raises(ValidationError, match=variable):
        Settings()


@pytest.mark.parametrize("variable", ["saga_timeout_s", "timer_interval_s", "commit_interval_s",
                                      "gateway_attempt_timeout_s"])
def test_an_interval_or_timeout_of_0_is_refused(monkeypatch, variable):
    monkeypatch.setenv(f"STREAMCART_{variable.upper()}", "0")
    with pytest.raises(ValidationError, match=variable):
        Settings()
