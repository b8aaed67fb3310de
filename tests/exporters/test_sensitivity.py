"""exporters/sensitivity.py: layers named by PyTorch module, ranked by validation accuracy, and the fewest kept in
FP32 for a budget, on a trained model with one deliberately fragile layer (tests/fixtures/fragile.py)."""
from pathlib import Path

import numpy as np
import pytest

from exporters import sensitivity as S
from exporters.onnx import export_fp32
from exporters.precision import quantize_file
from exporters.qdq import check_qdq
from tests.fixtures import fragile

BUDGET_PP = 0.5


@pytest.fixture(scope="module")
def fragile_run(data_root, tmp_path_factory):
    """FragileNet trained 2 epochs on 4,000 MNIST images, made fragile (factor 300), exported; its validation split."""
    from pipeline.config import DataConfig
    from pipeline.dataset import load_splits

    splits = load_splits(DataConfig(root=data_root, val_size=1000, max_train=4000))
    model = fragile.make_fragile(fragile.train(fragile.FragileNet(), splits.train_x, splits.train_y), 300.0)
    folder = tmp_path_factory.mktemp("fragile")
    fp32 = export_fp32(model, folder / "model-fp32.onnx", {})
    return {"fp32": fp32, "folder": folder, "calib": splits.train_x[:128].numpy(),
            "val_x": splits.val_x.numpy(), "val_y": splits.val_y.numpy()}


def _study(run, for_tensorrt=True):
    scorer = S.Scorer(run["fp32"], run["val_x"], run["val_y"], "basic" if for_tensorrt else "all")
    return S.Study(run["fp32"], run["folder"] / "model-int8.onnx", run["calib"], "minmax", scorer,
                   for_tensorrt=for_tensorrt)


def test_layers_are_named_by_pytorch_module_path_with_their_onnx_nodes(fragile_run):
    layers = S.layers(fragile_run["fp32"])
    assert [x.module for x in layers] == ["features.0", "features.3", "head"]
    assert [x.op for x in layers] == ["Conv", "Conv", "Gemm"]
    import onnx

    names = {n.name for n in onnx.load(str(fragile_run["fp32"])).graph.node}
    assert all(len(x.nodes) == 1 and x.nodes[0] in names for x in layers)


@pytest.mark.parametrize("for_tensorrt", [True, False], ids=["tensorrt-qdq", "cpu-u8s8"])
def test_fragile_layer_ranks_first_and_the_fallback_recovers_within_the_budget(fragile_run, for_tensorrt, tmp_path):
    with _study(fragile_run, for_tensorrt) as study:
        result = study.analyse()
        fp32 = result["fp32"]
        assert result["int8"].drop_pp(fp32) >= 1.0  # plain PTQ loses at least a point
        ranked = result["layers"]
        assert ranked[0]["layer"].module == fragile.FRAGILE
        assert ranked[0]["recovered_pp"] > 1.0 > max(r["recovered_pp"] for r in ranked[1:])
        assert ranked[0]["alone_drop_pp"] >= 1.0
        kept, score, steps = S.fewest_fp32_layers(study, [r["layer"] for r in ranked], BUDGET_PP)
    # the fragile layer is kept first, the budget is met with fewer layers than all, and every step was measured
    assert kept[0].module == fragile.FRAGILE and len(kept) < len(ranked)
    assert score.drop_pp(fp32) <= BUDGET_PP
    assert steps[0]["fp32_layers"] == [fragile.FRAGILE]
    assert [s["fp32_layers"] for s in steps if s["drop_pp"] <= BUDGET_PP][-1] == [x.module for x in kept]
    # the file written with that choice is the one measured: same accuracy, and it still passes TensorRT's QDQ rules
    out = quantize_file(fragile_run["fp32"], tmp_path / "mixed.onnx", fragile_run["calib"], "minmax", {},
                        for_tensorrt=for_tensorrt, exclude=S.nodes_of(kept))
    scorer = S.Scorer(fragile_run["fp32"], fragile_run["val_x"], fragile_run["val_y"],
                      "basic" if for_tensorrt else "all")
    assert scorer.score(out).accuracy == score.accuracy
    if for_tensorrt:
        assert check_qdq(out) == []
    import onnx

    dq_inputs = {i for n in onnx.load(str(out)).graph.node if n.op_type == "DequantizeLinear" for i in n.input}
    from exporters.precision import input_layers

    # the CPU form keeps the layer reading the image in float whatever the budget (exporters.cpu_placement)
    always_float = set() if for_tensorrt else set(input_layers(onnx.load(str(fragile_run["fp32"]))))
    for layer in S.layers(fragile_run["fp32"]):  # the kept layers' weights stayed float, the others' did not
        float_here = layer in kept or bool(set(layer.nodes) & always_float)
        assert any(i.startswith(f"{layer.module}.weight") for i in dq_inputs) == (not float_here), layer


def test_rank_orders_by_recovered_accuracy_then_accuracy_lost_alone():
    fp32, int8 = S.Score(0.95, None), S.Score(0.90, 10.0)
    layer = {name: S.Layer(name, (f"n_{name}",), "Conv") for name in "abc"}
    rows = [  # b recovers most; a and c tie on recovery, c loses more alone; a has the best SQNR (a proxy)
        {"layer": layer["a"], "fp32_only": S.Score(0.91, 40.0), "int8_only": S.Score(0.95, 50.0)},
        {"layer": layer["b"], "fp32_only": S.Score(0.94, 12.0), "int8_only": S.Score(0.93, 20.0)},
        {"layer": layer["c"], "fp32_only": S.Score(0.91, 11.0), "int8_only": S.Score(0.92, 15.0)},
    ]
    ranked = S.rank(rows, fp32, int8)
    assert [r["layer"].module for r in ranked] == ["b", "c", "a"]
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    assert ranked[0]["recovered_pp"] == pytest.approx(4.0) and ranked[1]["alone_drop_pp"] == pytest.approx(3.0)


def test_a_model_without_conv_gemm_or_matmul_is_refused_naming_its_ops(tmp_path):
    path = export_fp32(fragile.NoLayers(), tmp_path / "m.onnx", {})
    with pytest.raises(S.NothingToQuantize, match="no Conv, Gemm or MatMul.*Mul"):
        S.layers(path)


def test_a_single_fragile_layer_leaves_only_fp32(data_root, tmp_path):
    from pipeline.config import DataConfig
    from pipeline.dataset import load_splits

    splits = load_splits(DataConfig(root=data_root, val_size=1000, max_train=4000))
    model = fragile.train(fragile.DeadPixelLinear(), splits.train_x, splits.train_y, epochs=1)
    fp32 = export_fp32(model, tmp_path / "m.onnx", {})
    scorer = S.Scorer(fp32, splits.val_x.numpy(), splits.val_y.numpy(), "basic")
    with S.Study(fp32, tmp_path / "q.onnx", splits.train_x[:128].numpy(), "minmax", scorer, for_tensorrt=True) as st:
        assert st.score().drop_pp(scorer.fp32) > 5  # the fixture does what it says
        with pytest.raises(S.BudgetUnreachable, match="single quantizable layer"):
            S.fewest_fp32_layers(st, st.layers, BUDGET_PP)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no scratch file left behind


class _Measured:
    """A Study stand-in whose files score as a table says (by the set of layers kept in FP32)."""

    def __init__(self, fp32_accuracy: float, table: dict):
        self.scorer = type("Scorer", (), {"fp32": S.Score(fp32_accuracy, None)})()
        self.table, self.asked = table, []

    def score(self, kept=()):
        key = frozenset(x.module for x in kept)
        self.asked.append(key)
        return S.Score(self.table[key], 20.0)


LAYERS = [S.Layer(m, (f"node_{m}",), "Conv") for m in "abc"]


def test_the_fallback_drops_a_kept_layer_that_turns_out_unneeded():
    """a alone is not enough, a+b is; then b alone turns out enough: the answer is [b], not [a, b]."""
    study = _Measured(0.95, {frozenset("a"): 0.93, frozenset("ab"): 0.95, frozenset("b"): 0.948})
    kept, score, steps = S.fewest_fp32_layers(study, LAYERS, 0.5)
    assert [x.module for x in kept] == ["b"] and score.accuracy == 0.948
    assert [s["fp32_layers"] for s in steps] == [["a"], ["a", "b"], ["b"]]


def test_the_fallback_stops_at_the_first_choice_within_the_budget():
    study = _Measured(0.95, {frozenset("a"): 0.949})
    kept, _, steps = S.fewest_fp32_layers(study, LAYERS, 0.1)
    assert [x.module for x in kept] == ["a"] and len(steps) == 1  # nothing else was measured


def test_a_budget_missed_with_every_layer_but_one_in_fp32_is_unreachable():
    study = _Measured(0.95, {frozenset("a"): 0.90, frozenset("ab"): 0.94})
    with pytest.raises(S.BudgetUnreachable, match=r"smallest drop measured.* is 1\.00 points") as e:
        S.fewest_fp32_layers(study, LAYERS, 0.5)
    assert frozenset("abc") not in study.asked  # every layer in FP32 is the FP32 model, never tried as a file
    assert [s["fp32_layers"] for s in e.value.steps] == [["a"], ["a", "b"]]
