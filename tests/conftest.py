pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.app",
    "tests.fixtures.booking",
    "tests.fixtures.world",
    "tests.fixtures.worker",
    "tests.fixtures.observability",
    "tests.fixtures.records",
    "tests.fixtures.postgres_proxy",
]
