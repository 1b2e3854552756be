"""birl_lite.results: where a chapter finds the committed results."""

import pytest

from birl_lite import results


def test_results_folder_search_order_and_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(results, "_CACHE", tmp_path / ".cache" / "birl-book")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIRL_BOOK_OFFLINE", "1")
    monkeypatch.delenv("BIRL_BOOK_RESULTS", raising=False)
    assert results.results_folder("demo") is None  # nothing anywhere, and no fetch offline
    local = tmp_path / "results" / "demo"
    local.mkdir(parents=True)
    assert results.results_folder("demo") is None  # an empty folder does not count
    (local / "run.json").write_text("{}")
    assert results.results_folder("demo") == tmp_path / "results" / "demo"
    other = tmp_path / "elsewhere"
    (other / "demo").mkdir(parents=True)
    (other / "demo" / "a.json").write_text("{}")
    monkeypatch.setenv("BIRL_BOOK_RESULTS", str(other))
    assert results.results_folder("demo") == other / "demo"  # the environment variable wins
    with pytest.raises(ValueError, match="name"):
        results.results_folder("../etc")


def test_fetch_fails_quietly_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "REPOSITORY", "file:///nonexistent/birl-book")
    assert results.fetch_results(tmp_path / "clone", timeout=20) is None
    assert not (tmp_path / "clone").exists()


def _git(*args, cwd=None):
    import subprocess

    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args]
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=60)


def test_fetch_clones_results_only_from_the_repository_in_the_environment(tmp_path, monkeypatch):
    """The online path, without network: a bare repository in tmp_path, reached by a file:// URL
    through $BIRL_BOOK_REPOSITORY, is cloned shallow and sparse (results/ only) into the cache."""
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    work = tmp_path / "work"
    (work / "results" / "demo").mkdir(parents=True)
    (work / "results" / "demo" / "run.json").write_text('{"seed": 0}')
    (work / "chapters").mkdir()
    (work / "chapters" / "big.ipynb").write_text("{}")
    _git("init", "--quiet", "-b", "main", str(work))
    _git("add", ".", cwd=work)
    _git("commit", "--quiet", "-m", "first", cwd=work)
    (work / "results" / "demo" / "run2.json").write_text('{"seed": 1}')
    _git("add", ".", cwd=work)
    _git("commit", "--quiet", "-m", "second", cwd=work)
    bare = tmp_path / "book.git"
    _git("clone", "--quiet", "--bare", str(work), str(bare))

    cache = tmp_path / "cache"
    monkeypatch.setattr(results, "_CACHE", cache)
    monkeypatch.chdir(tmp_path)  # neither ./results nor ../results here
    monkeypatch.delenv("BIRL_BOOK_OFFLINE", raising=False)
    monkeypatch.delenv("BIRL_BOOK_RESULTS", raising=False)
    monkeypatch.setenv("BIRL_BOOK_REPOSITORY", bare.as_uri())
    assert results._repository() == bare.as_uri()
    assert results.results_folder("demo", fetch=False) is None  # no local copy, no fetch
    got = results.results_folder("demo")
    assert got == (cache / "results" / "demo").resolve()
    assert sorted(p.name for p in got.glob("*.json")) == ["run.json", "run2.json"]
    assert not (cache / "chapters").exists()  # sparse: results/ only
    assert not (cache.with_name(cache.name + ".partial")).exists()
    depth = subprocess.run(
        ["git", "-C", str(cache), "rev-list", "--count", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert depth == "1"  # shallow
    assert results.results_folder("missing") is None  # fetched, but no such experiment
    # a later call finds the cache without fetching again (the repository is gone)
    shutil.rmtree(bare)
    assert results.results_folder("demo") == got
    monkeypatch.delenv("BIRL_BOOK_REPOSITORY")
    assert results._repository() == results.REPOSITORY
