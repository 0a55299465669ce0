"""Data loading for the CLI: operator accounts, the demo dataset and benchmark datasets."""

from app.seed.demo import DEMO_PASSWORD, create_operator, print_demo_logins, seed_demo
from app.seed.errors import SeedError
from app.seed.scale import seed_scale

__all__ = [
    "DEMO_PASSWORD",
    "SeedError",
    "create_operator",
    "print_demo_logins",
    "seed_demo",
    "seed_scale",
]
