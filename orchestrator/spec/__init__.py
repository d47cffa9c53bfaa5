"""Stage 1, the job spec: YAML or JSON in, a frozen, validated `JobSpec` out.

`model` (the model section, a leaf everything builds on), `generation` (chat messages and sampling),
`quality` (the gate sections: judge, filters, dedup, quality report, mixing), `stages` (a job as a
row program of generate, judge and select stages, and the helpers workers run them with),
`stage_checks` (a stage list validated as a whole), `job` (the whole spec and its identity hash) and
`load` (reading a file, one clear message per problem). Nothing here imports a worker or Ray.
"""
