"""Project-level checks: dependency lists agree, config resolution, CLI parsing, notebook hygiene."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from wsseg_nb.__main__ import build_parser, parse_overrides
from wsseg_nb.chain import clean_notebook, discover_notebooks
from wsseg_nb.config import get_config

ROOT = Path(__file__).resolve().parent.parent
CONDA_TO_PIP = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda_names = {CONDA_TO_PIP.get(_name(d), _name(d)) for d in deps if isinstance(d, str)} - {"python", "pip"}
    assert conda_names == pip_names


def test_profiles_resolve_with_typed_overrides() -> None:
    paper = get_config("paper")
    assert (paper.spacing_mm, paper.slice_size, paper.cls_batch, paper.cls_pos_weight, paper.unet_pos_weight) == (
        (3.0, 2.0, 2.0), 256, 64, 7.7, 7.7)
    assert len(paper.t_grid) == 10 and len(paper.q_grid) == 20
    assert paper.t_grid[0] == pytest.approx(0.1) and paper.q_grid[-1] == pytest.approx(50.0)
    demo = get_config("demo", cls_epochs="3", spacing_mm="6,4,4", pretrained="none")
    assert demo.cls_epochs == 3 and demo.spacing_mm == (6.0, 4.0, 4.0) and demo.profile == "demo"


@pytest.mark.parametrize("bad", [{"no_such_key": 1}, {"cls_epochs": "three"}])
def test_bad_overrides_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        get_config("demo", **bad)


@pytest.mark.parametrize("key", ["cls_sampling", "unet_sampling", "cls_optimizer", "pretrained", "augment_engine",
                                 "subset"])
def test_string_settings_outside_their_choices_are_rejected_by_name(key: str) -> None:
    with pytest.raises(ValueError, match=rf"config {key}='bogus' is not one of \("):
        get_config("paper", **{key: "bogus"})


def test_unknown_profile_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        get_config("huge")


def test_cli_parses_repeatable_overrides() -> None:
    args = build_parser().parse_args(["run", "--profile", "paper", "-p", "cls_epochs=2", "-p", "seed=3"])
    assert args.profile == "paper" and parse_overrides(args.params) == {"cls_epochs": "2", "seed": "3"}
    with pytest.raises(SystemExit):
        parse_overrides(["cls_epochs"])


def test_clean_notebook_strips_execution_noise() -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"papermill": {"x": 1}, "widgets": {}})
    params = nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell("a = 2", metadata={"tags": ["injected-parameters"]})
    body = nbformat.v4.new_code_cell("a", metadata={"papermill": {}, "execution": {}, "tags": []})
    nb.cells = [params, injected, body]
    cleaned = clean_notebook(nb)
    assert [c.source for c in cleaned.cells] == ["a = 1", "a"]
    assert "papermill" not in cleaned.metadata and "widgets" not in cleaned.metadata
    assert cleaned.cells[1].metadata == {}
    assert cleaned.metadata["jupytext"]["formats"] == "ipynb,py:percent"


NOTEBOOKS = discover_notebooks(ROOT / "notebooks")


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_pair_in_sync_and_clean(source: Path) -> None:
    import jupytext
    import nbformat

    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} missing: run `make notebooks`"
    committed = nbformat.read(paired, as_version=4)
    text = jupytext.read(source)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in text.cells], \
        f"{paired.name} drifted from {source.name}: run `make notebooks` (or `make sync`)"
    assert not set(committed.metadata) & {"papermill", "widgets"}
    assert all(not set(c.metadata) & {"papermill", "execution"} for c in committed.cells)
    assert any("parameters" in c.metadata.get("tags", []) for c in committed.cells), "no papermill parameters cell"
    assert paired.stat().st_size < 1_500_000, f"{paired.name} is over 1.5 MB"
