"""The local stack's supervisor is `devstack.stack`; the benchmark scenarios import it here."""

from devstack.stack import API_KEY as API_KEY
from devstack.stack import DEPLOYMENT as DEPLOYMENT
from devstack.stack import SimulatorOptions as SimulatorOptions
from devstack.stack import Stack as Stack
from devstack.stack import sigterm_as_interrupt as sigterm_as_interrupt
