# Experiment tracking: after aggregation every fine-tuning run is logged to MLflow from its own files
# (`repro track`, src/repro/lm/tracking.py): params, per-step training metrics, evaluation metrics per
# checkpoint, commit and config hash. Part of the default targets only when tracking.enabled is true.
from repro.lm.tracking import experiment_name, public_uri, resolve_uri

TRACKING = config["tracking"]
TRACKING_SUMMARY = f"{RESULTS}/tracking/mlflow.json"
TRACKING_URI = resolve_uri(
    TRACKING["uri"], RESULTS
)  # checked when a run that tracks starts (Snakefile onstart)

if TRACKING["enabled"]:
    ALL_TARGETS.append(TRACKING_SUMMARY)


# The tracking server or the SQLite file must be reachable: the submit host, not a compute node.
localrules:
    track_runs,


rule track_runs:
    input:
        runs=f"{RESULTS}/lm/runs.csv",
        summaries=[f"{r}/summary.json" for r in all_runs()],
        logs=[f"{r}/train_log.csv" for r in all_runs()],
    output:
        TRACKING_SUMMARY,
    log:
        f"{LOGS}/tracking/track_runs.log",
    conda:
        "../../envs/tracking.yaml"
    resources:
        **resources_for("light"),
    params:
        config=RESOLVED_CONFIG,
        # Where the runs go (tracking.uri, else MLFLOW_TRACKING_URI, else the local store), password
        # removed: a new destination reruns the rule. The command resolves the full URI the same way.
        destination=public_uri(TRACKING_URI),
        experiment=experiment_name(config),
    shell:
        "repro track --configfile {params.config} --runs {input.runs} --experiment '{params.experiment}'"
        " --out {output} {input.summaries} > {log} 2>&1"
