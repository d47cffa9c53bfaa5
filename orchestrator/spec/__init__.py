"""Stage 1, the job spec: YAML or JSON in, a frozen, validated `JobSpec` out.

`model` (the model section, a leaf everything builds on), `quality` (the gate sections: judge,
filters, dedup, quality report, mixing), `job` (the whole spec and its identity hash) and `load`
(reading a file, one clear message per problem). Nothing here imports a worker or Ray.
"""
