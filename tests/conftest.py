"""Every test starts from the settings' defaults: a ``STREAMCART_*`` variable exported in the shell (the README
suggests some, such as ``STREAMCART_WORKERS=4``) would change what unit tests see and what the test stack runs.
Only the variables that steer the tests themselves are kept."""

import os

#: Read by tests/integration/conftest.py: where the test stack's ports are, whether it stays up afterwards.
KEPT = frozenset({"STREAMCART_TEST_PORT_OFFSET", "STREAMCART_KEEP_TEST_STACK"})

for _name in [name for name in os.environ if name.startswith("STREAMCART_") and name not in KEPT]:
    del os.environ[_name]
