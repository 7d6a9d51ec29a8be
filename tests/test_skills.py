from lib.agent import skills


def make(root, name, text):
    d = root / "skills" / name
    d.mkdir(parents=True)
    (d / "SKILL.md").write_text(text)
    return d / "SKILL.md"


def test_front_matter_gives_name_description_requirements_and_always(tmp_path):
    path = make(tmp_path, "x", "---\nname: demo\ndescription: Does a demo.\n"
                "requires:\n  bins: [sh, no-such-binary-xyz]\n  env: [NO_SUCH_VAR_XYZ]\nalways: true\n---\n# Body\ntext\n")
    s = skills.parse(path)
    assert (s.name, s.description, s.always) == ("demo", "Does a demo.", True)
    assert s.body.startswith("# Body")
    assert s.missing == ["command no-such-binary-xyz", "environment variable NO_SUCH_VAR_XYZ"]


def test_original_projects_metadata_form_is_understood(tmp_path):
    path = make(tmp_path, "old", '---\nname: old\ndescription: Legacy.\n'
                'metadata: {"nanobot": {"requires": {"bins": ["no-such-binary-xyz"]}, "always": true}}\n---\nbody')
    s = skills.parse(path)
    assert s.always and s.missing == ["command no-such-binary-xyz"]


def test_no_front_matter_uses_folder_name_and_first_line(tmp_path):
    s = skills.parse(make(tmp_path, "plain", "# Plain skill\nmore"))
    assert (s.name, s.description, s.always) == ("plain", "Plain skill", False)


def test_bad_front_matter_is_a_warning_not_a_crash(tmp_path, caplog):
    s = skills.parse(make(tmp_path, "bad", "---\nname: [unclosed\n---\nbody"))
    assert s.name == "bad" and "not valid YAML" in caplog.text


def test_bundled_skills_are_found_and_workspace_skills_override_them(tmp_path):
    names = {s.name: s for s in skills.discover(tmp_path)}
    assert {"github", "weather", "tmux", "summarize", "skill-creator", "cron"} <= set(names)
    assert all(s.description for s in names.values())
    make(tmp_path, "weather", "---\nname: weather\ndescription: My own weather.\n---\nmine")
    mine = {s.name: s for s in skills.discover(tmp_path)}["weather"]
    assert mine.description == "My own weather." and mine.path.is_relative_to(tmp_path)


def test_prompt_section_inlines_always_skills_and_lists_the_rest_with_what_they_lack(tmp_path):
    make(tmp_path, "a", "---\nname: a\ndescription: Always on.\nalways: true\n---\nALWAYS BODY")
    make(tmp_path, "b", "---\nname: b\ndescription: Needs a tool.\nrequires: {bins: [no-such-binary-xyz]}\n---\nB BODY")
    text = skills.prompt_section(skills.discover(tmp_path))
    assert "ALWAYS BODY" in text and "B BODY" not in text
    assert "- b: Needs a tool." in text and "unavailable: needs command no-such-binary-xyz" in text
    assert "SKILL.md" in text


def test_requirements_written_as_one_name_or_nonsense_do_not_break_the_prompt(tmp_path):
    """A skill the model wrote with `bins: curl` or `bins: 5` must not fail every turn."""
    one = skills.parse(make(tmp_path, "one", "---\nrequires: {bins: sh, env: HOME}\n---\nbody"))
    assert (one.bins, one.env) == (["sh"], ["HOME"])
    odd = skills.parse(make(tmp_path, "odd", "---\nrequires: {bins: 5, env: {a: 1}}\n---\nbody"))
    assert (odd.bins, odd.env) == ([], [])
    assert "odd" in skills.prompt_section(skills.discover(tmp_path))
