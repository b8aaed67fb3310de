"""pipeline/stages/export.py: a model that cannot be exported stops the run with a paragraph, keeping what the
train stage wrote. (The exported files themselves:
tests/pipeline/test_cli.py::test_quick_run_artifacts_describe_themselves.)"""
from tests.helpers import invoke


def test_untraceable_user_model_fails_with_a_paragraph(tmp_path, data_root):
    r = invoke("run", "all", "--quick", "--model", "tests.fixtures.user_models:DataDependent",
               "--artifacts", tmp_path, "--data-root", data_root)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "Could not export" in r.output
    assert (tmp_path / "tests.fixtures.user_models__DataDependent" / "train" / "model.pt").is_file()
