# Tables of the HTML report (`snakemake --report`, `make report`): the report shows HTML inline but a
# CSV only as a download, so the data of every table the studies report is rendered as an HTML page,
# registered by its branch in REPORT_TABLES (see the Snakefile) with a caption from workflow/report/.
# The figures are registered by the rules that draw them.
REPORT_TABLES_DIR = f"{RESULTS}/report/tables"


if REPORT_TABLES:
    ALL_TARGETS.extend(f"{REPORT_TABLES_DIR}/{Path(f).stem}.html" for f in REPORT_TABLES)

    rule report_tables:
        input:
            list(REPORT_TABLES),
        output:
            [report_table(f, REPORT_TABLES_DIR) for f in REPORT_TABLES],
        log:
            f"{LOGS}/report/report_tables.log",
        conda:
            "../../envs/report.yaml"
        resources:
            **resources_for("light"),
        params:
            out=folder("output", 0),
        shell:
            "repro report html-tables --out-dir {params.out} {input} > {log} 2>&1"
