"""Write the plain Prometheus rule file (`groups: ...`) held in deploy/prometheus/synthfleet-rules.yaml.

The PrometheusRule resource is the one source of the alert rules; a Prometheus without the operator
reads its `spec`.  Usage: python deploy/prometheus/rules_file.py OUT.yml
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

SOURCE = Path(__file__).with_name("synthfleet-rules.yaml")


def rule_groups(source: Path = SOURCE) -> dict:
    """The resource's spec: exactly a Prometheus rule file's content."""
    return yaml.safe_load(source.read_text())["spec"]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    Path(sys.argv[1]).write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
