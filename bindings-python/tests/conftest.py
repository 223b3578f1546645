"""Fixtures: one embedded broker for the session, and a fresh topic name per test."""

import itertools
import os

import pytest

import spate

_names = itertools.count()


@pytest.fixture(scope="session")
def broker():
    with spate.EmbeddedBroker() as running:
        yield running


@pytest.fixture()
def servers(broker):
    return broker.bootstrap_servers


@pytest.fixture()
def topic_name():
    """A topic name no other test uses (topics are created on first use or by the test)."""
    return f"t{os.getpid()}-{next(_names)}"


@pytest.fixture()
def admin(servers):
    with spate.Admin(servers) as client:
        yield client
