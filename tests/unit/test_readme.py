"""The README's config reference is generated from schemas/config.py and must not drift from it."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_in_readme_is_current():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- config-reference -->\n", "<!-- /config-reference -->"
    table = readme[readme.index(start) + len(start) : readme.index(end)]
    assert table == module.render(), "README config table is stale: run `python scripts/config_reference.py` and paste it"


def test_readme_quick_start_has_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_every_code_path_the_readme_names_exists():
    """Paths (`pipeline/build/run.py`) and modules (`pipeline.shards`) named in the README exist."""
    import re

    readme = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"\b((?:pipeline|trainer|schemas|bench|scripts|data|tests)/[\w/.-]*\w)", readme))
    missing = [p for p in sorted(paths) if not (ROOT / p).exists() and not any((ROOT / p).parent.glob((ROOT / p).name + "*"))]
    modules = set(re.findall(r"\b((?:pipeline|trainer|schemas)(?:\.[a-z_]+)+)\b", readme))
    for module in sorted(modules):
        parts = module.split(".")
        # `pipeline.shards.write_token_dataset`: the longest prefix that is a module or package counts.
        if not any((ROOT.joinpath(*parts[:k]).with_suffix(".py")).exists() or (ROOT.joinpath(*parts[:k]) / "__init__.py").exists()
                   for k in range(len(parts), 1, -1)):
            missing.append(module)
    assert not missing, f"README names paths that do not exist: {missing}"
