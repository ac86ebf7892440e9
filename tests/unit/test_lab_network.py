"""The lab's dnsmasq runs the configuration docs/lab.md gives a physical lab:
the page's block is what :func:`corral.lab.network.dnsmasq_config` writes, so
the lab test, which boots boards through it, tests the page too."""

from __future__ import annotations

import re
from pathlib import Path

from corral.lab.network import dnsmasq_config

DOC = Path(__file__).parents[2] / "docs" / "lab.md"


def test_docs_dnsmasq_configuration_is_the_one_the_lab_runs():
    blocks = re.findall(r"```ini\n# /etc/dnsmasq.d/corral.conf\n(.*?)```", DOC.read_text(),
                        re.DOTALL)
    assert len(blocks) == 1, "docs/lab.md has no dnsmasq block"
    assert blocks[0] == dnsmasq_config(interface="lab0", first="10.0.0.100", last="10.0.0.200",
                                       tftp_root="/srv/tftp", corral_url="http://10.0.0.1:8080")
