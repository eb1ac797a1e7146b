"""Project-level checks: dependency lists agree, config resolution, CLI parsing, notebook hygiene."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from wsseg_nb.__main__ import build_parser, parse_overrides
from wsseg_nb.chain import clean_notebook, discover_notebooks, kept_cell_metadata
from wsseg_nb.config import get_config
from wsseg_nb.errors import InputError

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
                                 "subset", "unet_norm", "unet_select"])
def test_string_settings_outside_their_choices_are_rejected_by_name(key: str) -> None:
    with pytest.raises(ValueError, match=rf"config {key}='bogus' is not one of \("):
        get_config("paper", **{key: "bogus"})


def test_settings_table_shows_values_with_their_sources() -> None:
    from wsseg_nb.config import settings_table

    demo = get_config("demo", unet_epochs=7)
    table = settings_table(demo, ["unet_epochs", "unet_norm"])
    assert table.index.tolist() == ["unet_epochs", "unet_norm"] and table.loc["unet_epochs", "value"] == 7
    assert table.loc["unet_epochs", "source"] == "Sec. 2.3.3: 200 epochs"
    with pytest.raises(KeyError, match="no_such"):
        settings_table(demo, ["no_such"])
    with pytest.raises(ValueError, match="unet_threshold_grid"):
        get_config("demo", unet_threshold_grid=(0.5, 1.0))
    for key, decay in (("unet_ema", 1.0), ("cls_ema", -0.1)):
        with pytest.raises(ValueError, match=key):
            get_config("demo", **{key: decay})


def test_unknown_profile_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        get_config("huge")


def test_cli_parses_repeatable_overrides() -> None:
    args = build_parser().parse_args(["run", "--profile", "paper", "-p", "cls_epochs=2", "-p", "seed=3"])
    assert args.profile == "paper" and parse_overrides(args.params) == {"cls_epochs": "2", "seed": "3"}
    with pytest.raises(InputError, match="-p expects key=value, got 'cls_epochs'"):
        parse_overrides(["cls_epochs"])


def test_clean_notebook_strips_execution_noise() -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"papermill": {"x": 1}, "widgets": {}})
    params = nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell("a = 2", metadata={"tags": ["injected-parameters"]})
    body = nbformat.v4.new_code_cell("a", metadata={"papermill": {}, "execution": {}, "tags": []})
    solution = nbformat.v4.new_code_cell("b", metadata={"tags": ["solution"], "scrolled": True, "collapsed": False,
                                                        "editable": True, "jupyter": {"source_hidden": True,
                                                                                      "outputs_hidden": True}})
    body.outputs = [nbformat.v4.new_output("stream", name="stderr", text="cams: 100%|####| 5/5 [01:20<00:00]\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="step 1\nfit:  40%|##  | 2/5\n")]
    nb.cells = [params, injected, body, solution]
    cleaned = clean_notebook(nb)
    assert [out.text for out in cleaned.cells[1].outputs] == ["step 1\n"]  # bars dropped, the printed line kept
    assert [c.source for c in cleaned.cells] == ["a = 1", "a", "b"]
    assert "papermill" not in cleaned.metadata and "widgets" not in cleaned.metadata
    assert cleaned.cells[0].metadata == {"tags": ["parameters"]}
    assert cleaned.cells[1].metadata == {}
    assert cleaned.cells[2].metadata == {"tags": ["solution"], "jupyter": {"source_hidden": True}}  # nothing else
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
    for name, nb in ((paired.name, committed), (source.name, text)):  # tags and jupyter.source_hidden, nothing else
        junk = [(k, dict(c.metadata)) for k, c in enumerate(nb.cells) if dict(c.metadata) != kept_cell_metadata(c.metadata)]
        assert not junk, f"{name}: cell metadata beyond tags and jupyter.source_hidden: {junk[:3]}"
    assert [dict(c.metadata) for c in committed.cells] == [dict(c.metadata) for c in text.cells], \
        f"{paired.name}: cell metadata differs from {source.name}: run `jupytext --update --to ipynb {source.name}`"
    assert any("parameters" in c.metadata.get("tags", []) for c in committed.cells), "no papermill parameters cell"
    assert paired.stat().st_size < 1_500_000, f"{paired.name} is over 1.5 MB"


EXERCISE = re.compile(r"^(?:\*\*)?(\d+)\.(?:\*\*)?\s", re.MULTILINE)  # "1. ...", "**1.** ...", "**1. Title.**"
SOLUTION = re.compile(r"\*\*Solution (\d+)\.\*\*")


def exercise_solutions(nb) -> tuple[list[int], list[tuple[int, int | None]]]:
    """The numbers of the exercises after the "## Exercises" heading, and for each code cell tagged `solution`: its
    `jupyter.source_hidden` and the number of the "**Solution k.**" line in the markdown cell just above it."""
    start = next((k for k, c in enumerate(nb.cells) if c.cell_type == "markdown"
                  and re.search(r"^## Exercises\s*$", c.source, re.MULTILINE)), None)
    assert start is not None, "no '## Exercises' heading"
    head = nb.cells[start].source.split("## Exercises", 1)[1]
    exercises = [int(m) for m in EXERCISE.findall(head)]
    exercises += [int(m) for c in nb.cells[start + 1:] if c.cell_type == "markdown" for m in EXERCISE.findall(c.source)]
    solutions = []
    for k, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "solution" not in cell.metadata.get("tags", []):
            continue
        assert k > start, f"solution cell {k} lies above the Exercises section"
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, f"solution cell {k} is not hidden"
        above = SOLUTION.findall(nb.cells[k - 1].source) if nb.cells[k - 1].cell_type == "markdown" else []
        solutions.append((k, int(above[-1]) if above else None))
    return exercises, solutions


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_exercise_has_a_hidden_solution_cell(source: Path) -> None:
    """Each exercise's solution is a code cell that runs (tags=["solution"], source hidden), in the .py and the .ipynb."""
    import jupytext
    import nbformat

    found = {}
    for name, nb in ((source.name, jupytext.read(source)),
                     (source.with_suffix(".ipynb").name, nbformat.read(source.with_suffix(".ipynb"), as_version=4))):
        exercises, solutions = exercise_solutions(nb)
        assert exercises == list(range(1, len(exercises) + 1)) and exercises, f"{name}: exercises numbered {exercises}"
        assert [n for _, n in solutions] == exercises, \
            f"{name}: exercises {exercises}, solution cells (cell, '**Solution k.**' above) {solutions}"
        assert not any("<details>" in c.source for c in nb.cells[solutions[0][0] - 1:] if c.cell_type == "markdown"), \
            f"{name}: a solution left in a <details> block"
        found[name] = len(solutions)
    assert len(set(found.values())) == 1, f"solution cells differ between the pair: {found}"


FROZEN_BAR = re.compile(r"\b\d{1,3}%\|")  # a tqdm bar's "k%|" left in an output
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:root|home|tmp|work|Users|mnt|private|var)/[\w.-]+")


def output_defects(nb) -> list[str]:
    """What a committed notebook's outputs must not carry: errors, widget bars, unfinished text bars, machine paths."""
    found = []
    for k, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                found.append(f"cell {k}: error output {out.ename}")
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data and "text/plain" in data \
                    and "Box(" not in data["text/plain"]:
                found.append(f"cell {k}: widget progress bar")
            text = out.get("text", "") + "".join(v for key, v in data.items() if key.startswith("text/") and isinstance(v, str))
            if any(m.group(0) != "100%|" for m in FROZEN_BAR.finditer(text)):
                found.append(f"cell {k}: unfinished progress bar")
            found += [f"cell {k}: absolute path {m.group(0)}" for m in ABSOLUTE_PATH.finditer(text)]
    return found


def test_output_defects_are_found() -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="cams:  40%|####  | 4/10\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="run directory /root/wsseg/runs/demo\n"),
                    nbformat.v4.new_output("stream", name="stderr", text="cams: 100%|######| 10/10\n"),
                    nbformat.v4.new_output("error", ename="KeyError", evalue="x", traceback=[])]
    nb.cells = [cell]
    assert output_defects(nb) == ["cell 0: unfinished progress bar", "cell 0: absolute path /root/wsseg",
                                  "cell 0: error output KeyError"]


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs_are_clean(source: Path) -> None:
    import nbformat

    paired = source.with_suffix(".ipynb")
    assert output_defects(nbformat.read(paired, as_version=4)) == []
    # the bound keeps the repository small; notebook 03's two 24-axes map panels alone are ~300 KB of PNG (session 11: 413 KB)
    assert paired.stat().st_size <= 450_000, f"{paired.name} is over 450 KB"


def test_cli_parameters_reach_the_notebooks_that_declare_them() -> None:
    from wsseg_nb.chain import split_parameters

    overrides, own = split_parameters({"cls_epochs": "2", "resume": "False", "split": "val"}, NOTEBOOKS)
    assert overrides == {"cls_epochs": "2"}
    assert own["02_classifier"] == {"resume": False} and own["05_baselines"] == {"resume": False}
    assert own["06_statistics"] == {"split": "val"} and own["01_data_and_suv"] == {}
    with pytest.raises(InputError, match=r"unknown parameter\(s\) \['resumee'\].*'resume'"):
        split_parameters({"resumee": "1"}, NOTEBOOKS)


def test_only_names_the_notebooks_that_exist(tmp_path: Path) -> None:
    from wsseg_nb.chain import run_chain

    with pytest.raises(InputError, match="--only 07 matches no notebook; the chain has 01_data_and_suv, 02_"):
        run_chain("demo", tmp_path, only=["07"])
    assert not any(tmp_path.iterdir())  # nothing written for a refused run


def test_progress_bars_are_plain_text() -> None:
    import io

    from wsseg_nb.progress import progress

    buf = io.StringIO()
    assert list(progress(range(3), desc="studies", file=buf, mininterval=0)) == [0, 1, 2]
    assert "studies: 100%|" in buf.getvalue() and "3/3" in buf.getvalue()
