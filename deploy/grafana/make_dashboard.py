#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/saegrid.json: the saegrid dashboard (job_id variable).
The panels' PromQL is here once; tests/metrics_test.cc runs every query against a live
Prometheus. Run it after editing a panel: python3 deploy/grafana/make_dashboard.py"""
import json
import os
import sys

J = '{job_id=~"$job_id"}'
PANELS = [
    # title, unit, [(legend, expr)], width
    ("FVU (fraction of variance unexplained)", "percentunit", [("{{job_id}}", f"saegrid_job_fvu{J}")], 8),
    # The final evaluation's downstream loss (evaluation.run: downstream_loss), next to FVU and the
    # dead latents: NaN (no point) until a job reports it.
    ("Loss recovered with the SAE spliced in", "percentunit", [
        ("{{job_id}}", f"saegrid_job_evaluation_loss_recovered{J}"),
        ("{{job_id}} FVU (final evaluation)", f"saegrid_job_evaluation_fvu{J}"),
    ], 8),
    ("Dead latents (fraction)", "percentunit", [("{{job_id}}", f"saegrid_job_dead_latents_ratio{J}")], 8),
    ("MSE", "none", [("{{job_id}}", f"saegrid_job_mse{J}")], 8),
    ("Dead latents (count)", "none", [("{{job_id}}", f"saegrid_job_dead_latents{J}")], 8),
    ("L0 (active latents per token)", "none", [("{{job_id}}", f"saegrid_job_l0{J}")], 8),
    ("Tokens per second", "short", [
        ("{{job_id}} reported", f"saegrid_job_tokens_per_second{J}"),
        ("{{job_id}} rate", f"sum by (job_id) (rate(saegrid_training_tokens_total{{job_id=~\"$job_id\",rank=\"0\"}}[1m]))"),
    ], 12),
    ("Step time percentiles", "s", [
        (f"p{q} {{{{job_id}}}}",
         f"histogram_quantile(0.{q}, sum by (le, job_id) (rate(saegrid_training_step_duration_seconds_bucket{J}[1m])))")
        for q in ("5", "9", "99")
    ], 12),
    ("Collective time per step (mean)", "s", [
        ("{{collective}} rank {{rank}}",
         f"sum by (collective, rank) (rate(saegrid_training_collective_duration_seconds_sum{J}[1m])) / "
         f"sum by (collective, rank) (rate(saegrid_training_collective_duration_seconds_count{J}[1m]))"),
    ], 12),
    ("Waiting for data (share of step time)", "percentunit", [
        ("{{job_id}} rank {{rank}}",
         f"sum by (job_id, rank) (rate(saegrid_training_data_wait_duration_seconds_sum{J}[1m])) / "
         f"sum by (job_id, rank) (rate(saegrid_training_step_duration_seconds_sum{J}[1m]))"),
    ], 12),
    ("Capacity overflows", "percentunit", [
        ("{{job_id}} share of tokens", f"saegrid_job_capacity_overflow_ratio{J}"),
        ("{{job_id}} tokens/s", f"sum by (job_id) (rate(saegrid_training_capacity_overflow_tokens_total{J}[1m]))"),
    ], 12),
    ("Training progress (steps)", "none", [("{{job_id}}", f"saegrid_job_step{J}")], 8),
    ("Jobs by state", "none", [("{{state}}", "sum by (state) (saegrid_jobs)")], 8),
    ("Workers by state", "none", [("{{state}}", "sum by (state) (saegrid_workers)")], 8),
    ("Restarts", "none", [
        ("{{job_id}}", f"saegrid_job_restarts{J}"),
        ("all jobs, last hour", "sum(increase(saegrid_job_restarts_total[1h])) or vector(0)"),
    ], 12),
    # The papers' other evaluations of the final SAE (docs/evaluations.md), each beside its baseline.
    ("Ablation sparsity: latents vs coordinates", "none", [
        ("{{job_id}} latents", f"saegrid_job_evaluation_ablation_sparsity{J}"),
        ("{{job_id}} coordinates", f"saegrid_job_evaluation_ablation_sparsity_baseline{J}"),
    ], 8),
    ("1-d probe loss: latents vs input channels", "none", [
        ("{{job_id}} latents", f"saegrid_job_evaluation_probe_loss{J}"),
        ("{{job_id}} channels", f"saegrid_job_evaluation_probe_baseline_loss{J}"),
    ], 8),
    ("Shrinkage, N2G F1, novel latents", "none", [
        ("{{job_id}} shrinkage ratio", f"saegrid_job_evaluation_shrinkage_ratio{J}"),
        ("{{job_id}} N2G F1", f"saegrid_job_evaluation_n2g_f1{J}"),
        ("{{job_id}} novel latents", f"saegrid_job_evaluation_novel_latents_ratio{J}"),
        ("{{job_id}} effective tokens", f"saegrid_job_evaluation_effective_tokens{J}"),
    ], 8),
    ("Checkpoint writes", "s", [
        ("{{job_id}} mean write time",
         f"sum by (job_id) (rate(saegrid_checkpoint_write_duration_seconds_sum{J}[5m])) / "
         f"sum by (job_id) (rate(saegrid_checkpoint_write_duration_seconds_count{J}[5m]))"),
    ], 12),
]


def panel(i, title, unit, targets, width, x, y):
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + k), "expr": expr, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "prometheus"}}
            for k, (legend, expr) in enumerate(targets)
        ],
    }


def main():
    panels, x, y = [], 0, 0
    for i, (title, unit, targets, width) in enumerate(PANELS):
        if x + width > 24:
            x, y = 0, y + 8
        panels.append(panel(i, title, unit, targets, width, x, y))
        x += width
    dashboard = {
        "uid": "saegrid",
        "title": "saegrid: SAE training",
        "tags": ["saegrid"],
        "timezone": "browser",
        "schemaVersion": 38,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "job_id", "label": "job", "type": "query",
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "query": {"query": "label_values(saegrid_job_step, job_id)", "refId": "job_id"},
            "definition": "label_values(saegrid_job_step, job_id)",
            "includeAll": True, "multi": True, "refresh": 2, "current": {},
        }]},
        "panels": panels,
    }
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "saegrid.json")
    text = json.dumps(dashboard, indent=2) + "\n"
    if "--check" in sys.argv:
        with open(out) as f:
            if f.read() != text:
                sys.exit(f"{out} is stale: run python3 deploy/grafana/make_dashboard.py")
        print(f"{out}: {len(panels)} panels, up to date")
        return
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
