import hashlib
import json

import pytest

from lib.sessions import Session, session_path


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_metadata_line_first_then_messages_appended_one_per_line(home):
    s = Session(home, "telegram", "42")
    s.append({"role": "user", "content": "hi", "id": "m1"})
    s.append({"role": "assistant", "content": "hello", "id": "m1"})
    rows = lines(s.path)
    assert rows[0]["_type"] == "metadata" and rows[0]["key"] == "telegram:42" and rows[0]["created_at"]
    assert [r["role"] for r in rows[1:]] == ["user", "assistant"]
    assert all(r["timestamp"] and r["id"] == "m1" for r in rows[1:])


def test_each_message_is_on_disk_as_soon_as_it_is_appended(home):
    s = Session(home, "cli", "x")
    s.append({"role": "user", "content": "one"})
    assert [m["content"] for m in Session(home, "cli", "x").messages] == ["one"]


def short_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def test_file_name_replaces_unsafe_characters_and_then_adds_a_hash_of_the_key(home):
    assert session_path(home, "slack", "C1/../x y:z").name == \
        f"slack_C1_.._x_y_z-{short_hash('slack:C1/../x y:z')}.jsonl"
    assert session_path(home, "email", "a@b.com").name == \
        f"email_a_b.com-{short_hash('email:a@b.com')}.jsonl"
    for plain in (("telegram", "12345"), ("email", "a_b.com"), ("cli", "x-1.y")):
        assert session_path(home, *plain).name == "_".join(plain) + ".jsonl"   # as before


def test_ids_that_differ_only_in_replaced_characters_never_share_a_file(home):
    chats = [Session(home, "email", who) for who in ("a@b.com", "a_b.com", "a#b.com")]
    for s in chats:
        s.append({"role": "user", "content": s.key})
    assert len({s.path for s in chats}) == 3
    assert [Session(home, "email", s.key[6:]).messages[0]["content"] for s in chats] == \
        ["email:a@b.com", "email:a_b.com", "email:a#b.com"]


def old_style_file(home, key: str, text: str):
    """sessions/email_a_b.com.jsonl as a version before the hash suffix wrote it."""
    path = home / "sessions" / "email_a_b.com.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"_type": "metadata", "key": key, "created_at": "2026-01-01T00:00:00Z"},
            {"role": "user", "content": text}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_file_named_the_old_way_is_kept_by_the_id_that_wrote_it(home):
    old = old_style_file(home, "email:a@b.com", "before the upgrade")
    s = Session(home, "email", "a@b.com")
    assert [m["content"] for m in s.messages] == ["before the upgrade"]
    assert s.path != old and not old.exists()
    s.append({"role": "assistant", "content": "after"})
    assert [r.get("content") for r in lines(s.path)] == [None, "before the upgrade", "after"]
    assert Session(home, "email", "a_b.com").messages == []     # its own name is free again


@pytest.mark.parametrize("first", ["a@b.com", "a_b.com"])
def test_a_file_named_the_old_way_by_another_id_is_left_to_it(home, first):
    """The old name of a@b.com is also the name of a_b.com: whoever opens it first, each id
    sees its own conversation only."""
    old_style_file(home, "email:a#b.com", "not yours")
    assert Session(home, "email", first).messages == []
    assert Session(home, "email", "a@b.com").messages == []
    assert Session(home, "email", "a_b.com").messages == []
    assert [m["content"] for m in Session(home, "email", "a#b.com").messages] == ["not yours"]
    old = old_style_file(home, "email:a_b.com", "mine")
    assert Session(home, "email", "a@b.com").messages == [] and old.exists()
    assert [m["content"] for m in Session(home, "email", "a_b.com").messages] == ["mine"]


def test_corrupt_and_torn_lines_are_skipped_with_a_warning_and_nothing_else_lost(home, caplog):
    s = Session(home, "cli", "t")
    s.append({"role": "user", "content": "a"})
    s.append({"role": "assistant", "content": "b"})
    with open(s.path, "a") as f:
        f.write('{"role": "user", "content": "torn')          # a crash mid-write
    again = Session(home, "cli", "t")
    assert [m["content"] for m in again.messages] == ["a", "b"]
    assert "torn or corrupt" in caplog.text
    again.append({"role": "user", "content": "c"})          # starts on a fresh line
    assert [m["content"] for m in Session(home, "cli", "t").messages] == ["a", "b", "c"]


def test_history_keeps_the_window_starts_at_a_user_message_and_drops_our_fields(home):
    s = Session(home, "cli", "h")
    s.append({"role": "user", "content": "q1", "id": "1"})
    s.append({"role": "assistant", "content": None, "id": "1", "reasoning_content": "hmm",
              "tool_calls": [{"id": "c", "type": "function", "function": {"name": "x", "arguments": "{}"}}]})
    s.append({"role": "tool", "tool_call_id": "c", "name": "x", "content": "r", "id": "1"})
    s.append({"role": "assistant", "content": "a1", "id": "1"})
    s.append({"role": "user", "content": "q2", "id": "2"})
    assert s.history(3) == [{"role": "user", "content": "q2"}]      # no orphan tool result first
    full = s.history(50)
    assert full[1] == {"role": "assistant", "content": None, "tool_calls": s.messages[1]["tool_calls"]}
    assert all(set(m) <= {"role", "content", "tool_calls", "tool_call_id", "name"} for m in full)


def test_consolidation_marker_survives_reload(home):
    s = Session(home, "cli", "c")
    for i in range(4):
        s.append({"role": "user" if i % 2 == 0 else "assistant", "content": str(i)})
    s.mark("consolidated", upto=2)
    again = Session(home, "cli", "c")
    assert again.consolidated == 2
    # consolidated lines still in the window stay in the prompt (SPEC §13: the last window)
    assert [m["content"] for m in again.history(50)] == ["0", "1", "2", "3"]
    assert [m["content"] for m in again.history(2)] == ["2", "3"]


def test_archive_moves_the_file_and_starts_empty(home):
    s = Session(home, "cli", "a")
    s.append({"role": "user", "content": "old"})
    s.archive()
    assert not s.path.exists() and s.messages == []
    archived = list((home / "sessions" / "archive").glob("cli_a.*.jsonl"))
    assert len(archived) == 1 and "old" in archived[0].read_text()
    assert Session(home, "cli", "a").messages == []


def test_a_line_of_valid_json_with_a_bad_value_is_skipped_not_fatal(home, caplog):
    s = Session(home, "cli", "v")
    s.append({"role": "user", "content": "a"})
    with open(s.path, "a") as f:
        f.write('{"_type": "consolidated", "upto": "x"}\n{"_type": "consolidated", "upto": null}\n')
    again = Session(home, "cli", "v")
    assert [m["content"] for m in again.messages] == ["a"] and again.consolidated == 0
    assert "torn or corrupt" in caplog.text


def test_a_tool_call_cut_off_without_its_result_gets_one_in_the_history(home):
    """Ctrl+C during exec in `agent` leaves a call with no result; the API would refuse every
    later request of the chat."""
    s = Session(home, "cli", "d")
    s.append({"role": "user", "content": "run it"})
    s.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "exec", "arguments": "{}"}},
        {"id": "c2", "type": "function", "function": {"name": "list_dir", "arguments": "{}"}}]})
    s.append({"role": "tool", "tool_call_id": "c1", "name": "exec", "content": "done"})
    s.append({"role": "user", "content": "next"})
    h = s.history(50)
    assert [(m["role"], m.get("tool_call_id")) for m in h] == [
        ("user", None), ("assistant", None), ("tool", "c1"), ("tool", "c2"), ("user", None)]
    assert h[3]["name"] == "list_dir" and h[3]["content"].startswith("Error:")
    assert len(Session(home, "cli", "d").messages) == 4          # the file is not rewritten


def test_a_chat_id_too_long_for_a_file_name_gets_a_short_name_of_its_own(tmp_path):
    """A file name holds 255 bytes: a longer key is cut and the hash of the whole key added, so
    two long ids that differ only at the end still have two files."""
    from lib.sessions import Session
    a, b = Session(tmp_path, "local", "y" * 300 + "a"), Session(tmp_path, "local", "y" * 300 + "b")
    a.append({"role": "user", "content": "hi"})
    b.append({"role": "user", "content": "ho"})
    assert a.path != b.path and len(a.path.name.encode()) <= 255
    assert Session(tmp_path, "local", "y" * 300 + "a").messages[0]["content"] == "hi"


def test_a_late_result_while_another_call_waits_still_makes_a_history_the_api_takes(tmp_path):
    """Two turns parked in one chat (calls c1, then d1), and the owner's yes to the first: c1's
    result comes after d1's call, which has none yet. The request must still pair every call
    with its result before anything else is said (OpenAI answers 400 otherwise)."""
    from lib.sessions import Session
    from tests.fakes.openai_server import _tool_order
    s = Session(tmp_path, "local", "x")

    def call(cid):
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": cid, "type": "function", "function": {"name": "exec", "arguments": "{}"}}]}
    for msg in ({"role": "user", "content": "clean up"}, call("c1"),
                {"role": "user", "content": "clean b"}, call("d1"),
                {"role": "tool", "tool_call_id": "c1", "name": "exec", "content": "done"}):
        s.append(msg)
    history = s.history(50)
    assert _tool_order(history) is None, history
    assert history[-1]["role"] == "user" and "done" in history[-1]["content"]
