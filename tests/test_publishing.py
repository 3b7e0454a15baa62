"""Links and publishing: the README's links work wherever it is read, the site's address is
written once (mkdocs.yml), the package's messages name the package and the site (never a
checkout path), and the workflows that publish are valid and run the README's commands."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flowattn_np import links

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PACKAGE = ROOT / "flowattn_np"
SITE_URL = links.mkdocs_urls(ROOT / "mkdocs.yml")["site_url"]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
# what a shipped message must never say: a loopback address, a checkout's paths, a
# checkout's install command
CHECKOUT_ONLY = ("127.0.0.1", "localhost:8000", "docs/", '".[', "'.[", 'pip install "."', "pip install .")


def _readme_block(lang, containing):
    blocks = [b.strip() for b in re.findall(rf"```{lang}\n(.*?)```", README, re.S)]
    (block,) = [b for b in blocks if containing in b]
    return block


def _markdown_links(text):
    return re.findall(r"\]\(([^)\s]+)\)|<(https?://[^>\s]+)>", text)


def test_no_loopback_address_in_the_readme_or_the_package():
    assert "127.0.0.1" not in README and "localhost" not in README
    for path in sorted(PACKAGE.glob("*.py")):
        assert "127.0.0.1" not in path.read_text(encoding="utf-8"), path.name


def test_readme_links_are_relative_files_that_exist_or_the_published_site():
    links = [a or b for a, b in _markdown_links(README)]
    relative = [u for u in links if not re.match(r"[a-z]+:", u)]
    assert {u.split("#")[0] for u in relative} >= {"docs/math.md", "docs/gpu.md", "docs/teaching.md"}
    assert sum(u.startswith("notebooks/") and u.endswith(".ipynb") for u in relative) == len(
        list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    for url in relative:
        assert (ROOT / url.split("#")[0]).exists(), f"README links to {url}, which is not in the repository"
    # the published site through the one address, mkdocs.yml's site_url
    assert SITE_URL.startswith("https://")
    on_site = [u for u in links if u.startswith(SITE_URL.split("/")[0] + "//" + SITE_URL.split("/")[2])]
    assert on_site and all(u.startswith(SITE_URL) for u in on_site), on_site


def test_the_site_address_is_written_once_in_mkdocs_yml():
    """The package, setup.py (the wheel's Project-URL) and the README take it from there."""
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "urls" in project["dynamic"] and "urls" not in project  # setup.py supplies them
    assert links.project_urls(ROOT / "mkdocs.yml")["Documentation"] == SITE_URL
    assert links.site_url() == SITE_URL.rstrip("/") + "/"
    assert links.page_url("gpu") == SITE_URL.rstrip("/") + "/gpu.html"  # use_directory_urls: false
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    assert config["site_url"] == SITE_URL  # the regex reads what MkDocs reads
    for path in [ROOT / "README.md", *sorted(PACKAGE.glob("*.py")), ROOT / "setup.py", ROOT / "pyproject.toml"]:
        text = path.read_text(encoding="utf-8")
        assert text.count(SITE_URL) <= (1 if path.name == "README.md" else 0), path.name


def _non_docstring_strings(tree):
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_package_messages_never_name_a_checkout_path():
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in _non_docstring_strings(ast.parse(path.read_text(encoding="utf-8"))):
            found += [f"{path.name}:{node.lineno}: {bad!r} in {node.value!r}"
                      for bad in CHECKOUT_ONLY if bad in node.value]
    assert not found, "\n".join(found)


def test_package_messages_name_the_package_and_the_site():
    from flowattn_np import backend
    from flowattn_np.experiments import reproduce as driver

    assert 'pip install "flowattn-np[plot]"' in driver.FIGURES_SKIPPED
    assert links.page_url("gpu") in backend._cupy_help()
    helped = subprocess.run([sys.executable, "-m", "flowattn_np", "coursework", "--help"], capture_output=True,
                            text=True, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert links.page_url("teaching") in helped.stdout.split()


# ------------------------------------------------------------------ publishing


def _load(path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in data:  # YAML 1.1 reads the key `on` as True
        data["on"] = data.pop(True)
    return data


def _commands(workflow):
    return [step["run"].strip() for job in workflow["jobs"].values() for step in job.get("steps", [])
            if "run" in step]


def _check_jsonschema(*args):
    """Exit status of ``check-jsonschema ARGS``, run in this process (one import for all calls)."""
    from check_jsonschema import main

    return main.main(args=list(args), standalone_mode=False)


def test_workflows_and_read_the_docs_config_pass_the_schema_linter(tmp_path, capsys):
    pytest.importorskip("check_jsonschema")
    assert {p.name for p in WORKFLOWS} == {"tests.yml", "docs.yml"}
    assert _check_jsonschema("--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)) == 0, \
        capsys.readouterr().out
    assert _check_jsonschema("--builtin-schema", "vendor.readthedocs", str(ROOT / ".readthedocs.yaml")) == 0, \
        capsys.readouterr().out
    # the linter does reject a broken workflow: a job without runs-on
    broken = tmp_path / "broken.yml"
    broken.write_text((ROOT / ".github/workflows/tests.yml").read_text().replace("runs-on: ubuntu-latest", ""))
    assert _check_jsonschema("--builtin-schema", "vendor.github-workflows", str(broken)) != 0
    assert "'runs-on' is a required property" in capsys.readouterr().out


def test_the_test_workflow_runs_ci_on_push_and_pull_request_on_the_oldest_and_newest_python():
    wf = _load(ROOT / ".github/workflows/tests.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    (job,) = wf["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    versions = job["strategy"]["matrix"]["python-version"]
    assert versions[0] == "3.10"  # pyproject's requires-python
    assert "3" in versions  # the python:3 image: the newest release
    assert job["env"]["CI"] == "true"  # the browser tests fail rather than skip
    # .ci/run installs what the tests need, then runs README.md's test command (test_packaging)
    assert _commands(wf) == ["bash .ci/run"]


def test_the_site_is_built_with_the_readme_command_and_deployed_to_pages():
    command = _readme_block("console", "mkdocs build")
    assert command == 'pip install ".[docs]" && mkdocs build --strict'
    wf = _load(ROOT / ".github/workflows/docs.yml")
    assert command in _commands(wf)
    uses = [step.get("uses", "").split("@")[0] for job in wf["jobs"].values() for step in job["steps"]]
    assert {"actions/configure-pages", "actions/upload-pages-artifact", "actions/deploy-pages"} <= set(uses)
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"
    rtd = yaml.safe_load((ROOT / ".readthedocs.yaml").read_text(encoding="utf-8"))
    assert rtd["build"]["commands"][0] == command
    assert any("$READTHEDOCS_OUTPUT/html" in c for c in rtd["build"]["commands"])
    # Read the Docs' address for this project is the one site address
    assert SITE_URL.startswith("https://flowattn-np.readthedocs.io/")


# ------------------------------------------------------------------ the browser


def test_browser_tests_skip_without_a_browser_and_fail_under_ci(monkeypatch, tmp_path):
    from helpers import require_browser

    monkeypatch.setenv("FLOWATTN_CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setenv("FLOWATTN_CHROMEDRIVER", str(tmp_path / "no-chromedriver"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-chromium and .*no-chromedriver not found"):
        require_browser()
    for name in ("chromium", "chromedriver"):
        (tmp_path / name).write_text("")
    monkeypatch.setenv("FLOWATTN_CHROMIUM", str(tmp_path / "chromium"))
    monkeypatch.setenv("FLOWATTN_CHROMEDRIVER", str(tmp_path / "chromedriver"))
    assert require_browser() == (str(tmp_path / "chromium"), str(tmp_path / "chromedriver"))


def test_readme_says_what_the_browser_tests_need():
    assert "sudo apt-get install chromium chromium-driver" in README
    assert "CI=true" in README

