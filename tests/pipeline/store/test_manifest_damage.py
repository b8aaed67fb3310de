"""Damaged-but-valid-JSON stages.json (pipeline/store/schema.py's manifest models) in a quick run's folder: `run`,
`verify` and `report` all refuse it in one paragraph and change nothing; v1 manifests are still read. (report.json's
schema: tests/pipeline/store/test_schema.py, which needs no run.)"""
import json

import pytest

from tests.helpers import invoke, one_paragraph, snapshot


def _edit(fn):
    def mutate(rec):
        fn(rec)
        return json.dumps(rec, indent=2)
    return mutate


MODEL_PT = "train/model.pt"
DAMAGED_MANIFESTS = {
    "sha256 not hex": _edit(lambda r: r["train"]["outputs"][MODEL_PT].update(sha256="xyz")),
    "size negative": _edit(lambda r: r["train"]["outputs"][MODEL_PT].update(size=-1)),
    "size a string": _edit(lambda r: r["train"]["outputs"][MODEL_PT].update(size="1234")),
    "size huge": _edit(lambda r: r["train"]["outputs"][MODEL_PT].update(size=10**30)),
    "sha256 missing": _edit(lambda r: r["train"]["outputs"][MODEL_PT].pop("sha256")),
    "output a number": _edit(lambda r: r["train"]["outputs"].update({MODEL_PT: 12345})),
    "outputs a list": _edit(lambda r: r["train"].update(outputs=[MODEL_PT])),
    "outputs null": _edit(lambda r: r["train"].update(outputs=None)),
    "key missing": _edit(lambda r: r["train"].pop("key")),
    "stage null": _edit(lambda r: r.update(train=None)),
    "stage a list": _edit(lambda r: r.update(train=[])),
    "seconds a string": _edit(lambda r: r["data"].update(seconds="4.8")),
    "versions of numbers": _edit(lambda r: r["data"].update(versions={"torch": 2.14})),
    "inputs a string": _edit(lambda r: r["data"].update(inputs="x")),
    "output outside the run folder": _edit(lambda r: r["train"]["outputs"].update({"../../etc/passwd": "0" * 64})),
    "unknown format": _edit(lambda r: r.update(format="someone-else/manifest-v9")),
    "key with markup": _edit(lambda r: r.update({"[/x]": {"key": "[bold]"}})),
    "NaN literal": lambda r: json.dumps(r).replace('"seconds": ', '"seconds": NaN, "was": ', 1),
    "number too big": lambda r: json.dumps(r).replace('"seconds": ', '"seconds": 1e999, "was": ', 1),
    "top level a list": lambda r: json.dumps([r]),
}


@pytest.mark.parametrize("case", list(DAMAGED_MANIFESTS))
def test_damaged_but_valid_json_manifest_is_refused_by_run_verify_and_report(quick_copy, data_root, case):
    run = quick_copy / "edgenet"
    rec = json.loads((run / "stages.json").read_text())
    (run / "stages.json").write_text(DAMAGED_MANIFESTS[case](rec))
    def files():  # the lock file holds the last run's pid
        return {k: v for k, v in snapshot(quick_copy).items() if not k.endswith(".lock")}

    before = files()
    for args in (["run", "all", "--quick", "--artifacts", quick_copy, "--data-root", data_root],
                 ["verify", run], ["report", run]):
        r = invoke(*args)
        out = one_paragraph(r)
        assert f"The run manifest {run / 'stages.json'} is unreadable" in out, (args[0], out)
        assert files() == before


def test_a_v1_manifest_with_bare_hashes_is_still_accepted(quick_copy):
    run = quick_copy / "edgenet"
    rec = json.loads((run / "stages.json").read_text())
    rec.pop("format")
    for entry in rec.values():  # v1: bare SHA-256 strings, no inputs, no versions
        entry["outputs"] = {rel: o["sha256"] for rel, o in entry["outputs"].items()}
        entry.pop("inputs")
        entry.pop("versions")
    (run / "stages.json").write_text(json.dumps(rec))
    r = invoke("verify", run)
    assert r.exit_code == 0, r.output


def test_the_messages_name_the_field_and_the_problem(quick_copy):
    from pipeline.store import manifest
    from pipeline.errors import PipelineError

    run = quick_copy / "edgenet"
    rec = json.loads((run / "stages.json").read_text())
    rec["train"]["outputs"][MODEL_PT]["size"] = "1234"
    rec["data"].pop("key")
    (run / "stages.json").write_text(json.dumps(rec))
    with pytest.raises(PipelineError) as e:
        manifest.load(run / "stages.json")
    msg = str(e.value)
    assert "data.key: field required" in msg and 'train.outputs.train/model.pt.size: input should be a valid integer (got "1234")' in msg
