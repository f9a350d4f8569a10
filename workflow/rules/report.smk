# Tables of the HTML report (`snakemake --report`, `make report`): the report shows HTML inline but a
# CSV only as a download, so the data of every table the studies report is rendered as an HTML page,
# registered under its study with a caption from workflow/report/. The figures are registered by the
# rules that draw them.
REPORT_TABLES_DIR = f"{RESULTS}/report/tables"
# CSV -> (caption file stem, category), for the branches this workflow includes.
REPORT_TABLES = {}
if "LAWS" in globals():
    REPORT_TABLES.update(
        {
            f"{LAWS}/fits.csv": ("laws_fits", "Forgetting laws"),
            f"{LAWS}/early_stopping.csv": ("early_stopping", "Forgetting laws"),
            f"{LAWS}/gradnorm_spread.csv": ("gradnorm_spread", "rsLoRA"),
            f"{LAWS}/rank_stability_slopes.csv": ("rank_stability_slopes", "rsLoRA"),
        }
    )
if "TEB_DIR" in globals():
    REPORT_TABLES.update(
        {
            f"{TEB_DIR}/evals.csv": ("teb_evals", "TEB"),
            f"{TEB_DIR}/te_sweep.csv": ("teb_te_sweep", "TEB"),
            f"{TEB_DIR}/info_plane.csv": ("teb_info_plane_table", "TEB"),
            f"{TEB_DIR}/estimators.csv": ("teb_estimators", "TEB"),
        }
    )
if "COMP_TABLES" in globals():
    REPORT_TABLES.update(
        {f: (f"compression_{Path(f).stem}", "Compression schemes") for f in COMP_TABLES if f.endswith(".csv")}
    )


if REPORT_TABLES:
    ALL_TARGETS.extend(f"{REPORT_TABLES_DIR}/{Path(f).stem}.html" for f in REPORT_TABLES)

    rule report_tables:
        input:
            list(REPORT_TABLES),
        output:
            [report_table(f) for f in REPORT_TABLES],
        log:
            "logs/report/report_tables.log",
        conda:
            "../../envs/report.yaml"
        resources:
            **resources_for("light"),
        params:
            out=folder("output", 0),
        shell:
            "repro report html-tables --out-dir {params.out} {input} > {log} 2>&1"
