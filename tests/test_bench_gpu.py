"""The GPU benchmark runs anywhere with tiny models: one row per model and dtype, with its host-sync counts."""

from hf_sparse_attack.evaluation.benchmarks import bench_gpu


def test_the_gpu_table_runs_with_tiny_models_on_cpu(capsys):
    rows = bench_gpu.main(["--tiny", "--device", "cpu", "--steps", "2", "--repeats", "1", "--rounds", "1"])
    assert [row[:2] for row in rows] == [[case.name, dtype] for case in bench_gpu.CASES
                                         for dtype in ("float32", "bfloat16")]
    assert all(len(row) == len(bench_gpu.HEADER) and float(row[3]) > 0 for row in rows)
    for row in rows:  # the attacks' own syncs: at most one per step (detection adds its matching and the model's)
        if row[0] != "DETR-R50":
            assert float(row[9]) <= 1.0 and float(row[10]) <= 1.0, row
    assert capsys.readouterr().out.count("\n| ") == 1 + len(rows)
