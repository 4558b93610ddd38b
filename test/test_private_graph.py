"""Private graphs: each run draws its ROS domain from its range, so parallel test workers never share one."""

from __future__ import annotations

import pytest

from dfp_ros.tools.graph import DOMAIN_RANGE_ENV, domain_id


def test_domains_stay_in_the_range_the_environment_names(monkeypatch):
    monkeypatch.setenv(DOMAIN_RANGE_ENV, "51-100")
    upper = {domain_id(offset) for offset in range(200)}
    monkeypatch.setenv(DOMAIN_RANGE_ENV, "1-50")
    lower = {domain_id(offset) for offset in range(200)}
    assert upper == set(range(51, 101)) and lower == set(range(1, 51))
    monkeypatch.delenv(DOMAIN_RANGE_ENV)
    assert {domain_id(offset) for offset in range(200)} == set(range(1, 101))


@pytest.mark.parametrize("spec", ["51", "a-b", "60-50", "200-300"])
def test_a_malformed_domain_range_is_refused_with_its_value(monkeypatch, spec):
    monkeypatch.setenv(DOMAIN_RANGE_ENV, spec)
    with pytest.raises(ValueError, match=f"{DOMAIN_RANGE_ENV}='{spec}'"):
        domain_id()
