"""Today's usage as the page reads it from usage/YYYY-MM-DD.jsonl (SPEC §10): summed by source,
a torn line skipped, none when there is no file, the limits when the config has them."""
import json
from datetime import datetime, timezone
from types import SimpleNamespace

from lib.web.page import usage_today


def settings(home, limits=None):
    config = SimpleNamespace(home=home, agents=SimpleNamespace(defaults=SimpleNamespace(timezone="UTC")))
    if limits:
        config.limits = SimpleNamespace(**limits)
    return config


def test_no_ledger_is_none_and_no_limits_is_zero(home):
    u = usage_today(settings(home))
    assert (u["calls"], u["tokens"], u["by_source"], u["limits"]) == \
        (0, 0, {}, {"daily_tokens": 0, "daily_usd": 0})


def test_today_is_summed_by_source_against_the_limits(home):
    day = datetime.now(timezone.utc).date().isoformat()
    (home / "usage").mkdir()
    lines = [{"source": "chat", "prompt_tokens": 100, "completion_tokens": 20, "cost_usd": 0.5},
             {"source": "cron", "prompt_tokens": 10, "completion_tokens": 0},
             {"source": "chat", "prompt_tokens": 1, "completion_tokens": 1, "cost_usd": 0.25}]
    (home / "usage" / f"{day}.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines) + '{"source": "chat", "prompt_tok')
    u = usage_today(settings(home, {"daily_tokens": 1000, "daily_usd": 2.0}))
    assert (u["day"], u["calls"], u["tokens"], u["cost_usd"]) == (day, 3, 132, 0.75)
    assert u["by_source"]["chat"] == {"calls": 2, "tokens": 122, "cost_usd": 0.75}
    assert u["limits"] == {"daily_tokens": 1000, "daily_usd": 2.0}
