"""pipeline/stages/train.py: the training summary's throughput, on the session's quick run."""
import json


def test_summary_and_report_show_training_throughput_against_the_peak(quick_run):
    summary = json.loads((quick_run["dir"] / "train" / "history.json").read_text())
    tp, hist = summary["throughput"], summary["history"]
    assert summary["world_size"] == 1
    images, seconds = sum(h["images"] for h in hist), sum(h["train_seconds"] for h in hist)
    assert images == summary["epochs"] * summary["train_images"]  # every training image once per epoch
    assert seconds < summary["seconds"]  # the loops alone: validation passes are not training time
    assert abs(tp["images_per_s"] - images / seconds) <= 0.05
    report = quick_run["report"]
    assert report["train"]["throughput"] == tp
    gflops = 2 * 3 * report["macs_per_image"] * tp["images_per_s"] / 1e9
    assert abs(tp["gflops"] - gflops) <= 0.01 * gflops
    # the same peak probe as the variants' efficiency (measured once per process)
    assert abs(tp["fraction_of_peak"] - tp["gflops"] / report["cpu_peak_gflops"]) <= 0.01 * tp["fraction_of_peak"]
    md = (quick_run["dir"] / "report.md").read_text()
    assert f"Training throughput: {tp['images_per_s']:,.0f} images/s" in md and "3 x the forward MACs" in md
