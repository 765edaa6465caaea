"""environment.yml and pyproject.toml pin the same set."""

import re
import tomllib

from conftest import ROOT


def test_environment_yml_matches_pyproject_pins():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in p for p in pins), "every dependency in pyproject.toml is pinned exactly"
    env = re.findall(r"^\s*-\s+([A-Za-z0-9_.\-]+==[^\s#]+)", (ROOT / "environment.yml").read_text(), re.M)
    assert sorted(env) == sorted(pins)


def test_torch_is_the_cpu_pin():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.13.0" in pins
