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
