"""`streamcart init` (ensure_topics) with no Kafka to answer: the one-line error every other command gives."""

import socket

import pytest

from streamcart.settings import Settings
from streamcart.stack import admin
from streamcart.stack.admin import ensure_topics, stack_topics
from streamcart.stack.errors import StackError


def test_ensuring_the_topics_with_no_kafka_answering_says_so_instead_of_a_traceback(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(home=tmp_path, kafka_port=port)
    monkeypatch.setattr(admin, "TIMEOUT_S", 1.0)
    with pytest.raises(StackError, match=rf"Kafka at 127.0.0.1:{port} does not answer .*is the stack up"):
        ensure_topics(settings, stack_topics(settings))
